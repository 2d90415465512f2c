"""Inputs from the user's own storage, in real Airflow (``airflow dags test``) with a real S3 API (moto).

The stories: an image named by ``s3://`` path is sent as a pre-signed URL the
emulator fetches for real, and the edited output lands in an ``s3://``
``output_dir``; a local file is sent inline; an oversized local file and a
dead https link fail the task before anything is submitted; with pre-flight
off the dead link is submitted and RunComfy fails the job, as before; and no
pre-signed URL is left in XCom, the metadata DB or the logs.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import MAX_DATA_URI_BYTES

from .conftest import AirflowEnv, DagRun

if TYPE_CHECKING:
    from tests.s3_fixture import MotoS3

pytest_plugins = ["tests.s3_fixture"]
pytestmark = pytest.mark.integration


def tiny_png() -> bytes:
    """A real picture the emulator can decode: one of its own samples would do, but bytes are clearer."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x20\x80\xc0" * 8 for _ in range(8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def env_for(emu: RunComfyEmulator, s3: MotoS3 | None = None) -> dict[str, str]:
    return {**emu.airflow_conn_env(), **(s3.env if s3 else {})}


def run_inputs(
    env: AirflowEnv, emu: RunComfyEmulator, dag_id: str, s3: MotoS3 | None = None, **conf: Any
) -> DagRun:
    """``airflow dags test`` of a DAG of ``it_inputs.py`` with these params (S3 reachable when given)."""
    return env.dags_test(dag_id, conf=conf, env=env_for(emu, s3))


def s3_and_local_pictures(s3: MotoS3, tmp_path: Path) -> tuple[str, str]:
    """Two pictures to send: one in the bucket, one on the worker's disk (their names, as a user gives them)."""
    s3.put("s3://inputs/a.png", tiny_png())
    local = tmp_path / "b.png"
    local.write_bytes(tiny_png())
    return "s3://inputs/a.png", str(local)


def dead_link(emu: RunComfyEmulator) -> str:
    """An https-like link whose host answers 404 (the emulator has no such sample)."""
    return f"{emu.base_url}/samples/nosuchpicture.png"


def assert_failed_before_submit(run: DagRun, emu: RunComfyEmulator, *phrases: str) -> None:
    run.assert_states(edit="failed")
    for phrase in phrases:
        assert phrase in run.output, (phrase, run.output[-4000:])
    assert emu.journal.count("submit") == 0


def everything_stored(run: DagRun, home: Path) -> str:
    """Every text Airflow kept of the run: the metadata DB (XCom, trigger rows, rendered fields,
    task state) dumped whole, the task logs on disk, and what ``airflow dags test`` printed."""
    with sqlite3.connect(run.db) as conn:
        db = "\n".join(conn.iterdump())
    logs = "\n".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())
    return "\n".join((db, logs, run.output))


def secrets_of(signed_url: str) -> list[str]:
    query = urlsplit(signed_url).query
    return [signed_url, query] + [v for k, v in parse_qsl(query) if "signature" in k.lower()]


def test_an_s3_image_is_signed_fetched_by_runcomfy_and_its_edit_kept_in_s3(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, moto_s3: MotoS3
) -> None:
    picture = tiny_png()
    moto_s3.put("s3://inputs/people/in.png", picture)
    moto_s3.bucket("outputs")

    run = run_inputs(
        airflow_env,
        emu,
        "it_inputs",
        moto_s3,
        image_url="s3://inputs/people/in.png",
        output_dir="s3://outputs/kept",
    )

    run.assert_states(edit="success")
    (submit,) = emu.journal.of("submit")
    signed = submit.json["image_url"]
    assert signed.startswith(f"{moto_s3.endpoint_url}/inputs/people/in.png?")  # RunComfy got a pre-signed URL
    job = emu.job(submit.request_id)
    assert job.phase == "succeeded", job  # ... and fetched it: a fetch that fails fails the job
    # The edit was kept in the bucket, and the return value says where.
    result = run.xcom("edit")
    (stored,) = result["stored"]
    assert stored["uri"].startswith("s3://outputs/kept/it_inputs/")
    assert moto_s3.read(stored["uri"]) == emu_file(emu, result["outputs"][0])
    assert moto_s3.find("s3://outputs/kept") == [stored["uri"]]
    # The task log says what was done, by path; the pre-signed URL is nowhere Airflow keeps things.
    assert "RunComfy input image_url: s3://inputs/people/in.png signed (image/png" in run.output
    kept = everything_stored(run, airflow_env.home)
    for secret in secrets_of(signed):
        assert secret not in kept


def emu_file(emu: RunComfyEmulator, url: str) -> bytes:
    import httpx

    return httpx.get(url, timeout=10).content


def test_a_local_image_is_sent_inline(airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    picture.write_bytes(tiny_png())

    run = run_inputs(airflow_env, emu, "it_inputs_blocking", image_url=str(picture))

    run.assert_states(edit="success")
    (submit,) = emu.journal.of("submit")
    assert submit.json["image_url"] == "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    assert emu.job(submit.request_id).phase == "succeeded"
    assert f"RunComfy input image_url: {picture} inlined (image/png" in run.output


def test_images_from_s3_and_disk_go_together_in_one_job(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, moto_s3: MotoS3, tmp_path: Path
) -> None:
    in_s3, local = s3_and_local_pictures(moto_s3, tmp_path)

    run = run_inputs(airflow_env, emu, "it_inputs_nano", moto_s3, image_url=in_s3, second_image=local)

    run.assert_states(edit="success")
    first, second = emu.journal.last("submit").json["image_urls"]
    assert first.startswith(f"{moto_s3.endpoint_url}/inputs/a.png?")
    assert second.startswith("data:image/png;base64,")


def test_an_oversized_local_image_is_refused_before_any_request(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    picture = tmp_path / "big.png"
    picture.write_bytes(tiny_png() + b"\x00" * MAX_DATA_URI_BYTES)

    run = run_inputs(airflow_env, emu, "it_inputs", image_url=str(picture))

    assert_failed_before_submit(
        run, emu, f"image_url {picture} is 6.3 MB", "which RunComfy accepts up to 6 MiB"
    )
    assert emu.journal.count() == 0


def test_a_missing_s3_object_is_refused_before_any_request(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, moto_s3: MotoS3
) -> None:
    moto_s3.bucket("inputs")
    run = run_inputs(airflow_env, emu, "it_inputs", moto_s3, image_url="s3://inputs/typo.png")
    assert_failed_before_submit(run, emu, "image_url s3://inputs/typo.png does not exist")


def test_a_dead_https_link_fails_before_the_submit(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    dead = dead_link(emu)

    run = run_inputs(airflow_env, emu, "it_inputs", image_url=dead)

    assert_failed_before_submit(run, emu, f"Pre-flight of image_url {dead}", "answered HTTP 404")
    assert run.xcom("edit", key="request_id") is None


def test_with_pre_flight_off_the_dead_link_is_submitted_and_runcomfy_fails_the_job(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    dead = dead_link(emu)

    run = run_inputs(airflow_env, emu, "it_inputs_unchecked", image_url=dead)

    run.assert_states(edit="failed")
    assert emu.journal.count("submit") == 1  # the old behaviour: found only after the job ran
    assert emu.journal.count("sample") == 0  # the worker asked nothing of the picture's host
    assert "could not fetch image_url" in run.output and "404" in run.output


def test_a_batch_signs_inlines_and_pre_flights_its_items_and_reports_the_dead_link_as_invalid(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, moto_s3: MotoS3, tmp_path: Path
) -> None:
    in_s3, local = s3_and_local_pictures(moto_s3, tmp_path)
    inputs = [
        {"prompt": "item 0", "image_urls": [in_s3]},
        {"prompt": "item 1", "image_urls": [local]},
        {"prompt": "item 2", "image_urls": [dead_link(emu)]},
        {"prompt": "item 3", "image_urls": [emu.sample_url("portrait")]},
    ]
    out = tmp_path / "out"

    run = run_inputs(airflow_env, emu, "it_inputs_batch", moto_s3, inputs=inputs, output_dir=str(out))

    run.assert_states(batch="success")
    (manifest_path,) = out.rglob("manifest.jsonl")
    records = [json.loads(line) for line in manifest_path.read_text().splitlines()]
    assert [r["status"] for r in records] == ["succeeded", "succeeded", "invalid", "succeeded"]
    assert "Pre-flight of image_urls[0]" in records[2]["error"] and "HTTP 404" in records[2]["error"]
    assert [r["input"] for r in records] == inputs  # the paths, as given
    sent = {e.json["prompt"]: e.json["image_urls"][0] for e in emu.journal.of("submit")}
    assert sorted(sent) == ["item 0", "item 1", "item 3"]  # the dead link was never paid for
    assert sent["item 0"].startswith(f"{moto_s3.endpoint_url}/inputs/a.png?")
    assert sent["item 1"].startswith("data:image/png;base64,")
    kept = everything_stored(run, airflow_env.home) + manifest_path.read_text()
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            kept += path.read_text()
    for secret in secrets_of(sent["item 0"]):
        assert secret not in kept


def test_a_retry_re_attaches_to_the_job_of_an_s3_input_although_it_would_be_signed_anew(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, moto_s3: MotoS3
) -> None:
    moto_s3.put("s3://inputs/in.png", tiny_png())

    run = run_inputs(airflow_env, emu, "it_inputs_retry", moto_s3, image_url="s3://inputs/in.png")

    run.assert_states(edit="success")
    assert "worker lost after the job succeeded" in run.output  # the first try did fail
    assert emu.journal.count("submit") == 1  # the inputs' fingerprint is the path, not the signed URL
    assert run.xcom("edit")["request_id"] == emu.journal.last("submit").request_id
