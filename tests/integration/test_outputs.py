"""Keeping the outputs: real Airflow (``airflow dags test``) copying the emulator's files over real HTTP.

The stories: a task keeps its outputs in a ``file://`` or ``memory://``
``output_dir`` and says so in its return value; a download cut off midway
leaves nothing under the final name and the retry completes it; a file over
the cap fails the task plainly; output fetches never carry the token; a retry
that finds its copy whole does not download it again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_runcomfy.client.download import DOWNLOAD_ATTEMPTS
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.storage import safe_segment

from .conftest import AirflowEnv, DagRun

pytestmark = pytest.mark.integration

STORED_KEYS = {"uri", "source_url", "bytes", "sha256", "content_type"}


def conf(emu: RunComfyEmulator, output_dir: str, **more: str) -> dict[str, str]:
    return {"image_url": emu.sample_url("portrait"), "output_dir": output_dir, **more}


def keep(env: AirflowEnv, emu: RunComfyEmulator, dag_id: str, output_dir: str, **more: str) -> DagRun:
    """``airflow dags test`` of a DAG of ``it_outputs.py`` keeping its outputs in ``output_dir``."""
    return env.dags_test(dag_id, conf=conf(emu, output_dir, **more), env=emu.airflow_conn_env())


def try_number(run: DagRun, task_id: str = "edit") -> int:
    rows = run._query(
        "SELECT try_number FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ?",
        run.dag_id,
        run.run_id,
        task_id,
    )
    return int(rows[0][0])


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_is_the_served_file(stored: dict[str, Any], path: Path | None = None) -> None:
    """The copy (at ``path``, else at its ``file://`` URI) holds exactly the bytes the output URL
    serves, and the entry says so."""
    path = path or Path(stored["uri"].removeprefix("file://"))
    served = httpx.get(stored["source_url"], timeout=10).content
    data = path.read_bytes()
    assert data == served
    assert stored["bytes"] == len(data)
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_task_keeps_its_output_in_a_file_dir_and_returns_where(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = keep(airflow_env, emu, "it_outputs", f"file://{tmp_path}")

    run.assert_states(edit="success")
    result = run.xcom("edit")
    (stored,) = result["stored"]
    request_id = result["request_id"]
    name = f"it_outputs/{safe_segment(run.run_id)}/edit/-1/{request_id}_0.png"
    assert stored.keys() == STORED_KEYS
    assert stored["uri"] == f"file://{tmp_path}/{name}"
    assert stored["source_url"] == result["outputs"][0]
    assert stored["content_type"] == "image/png"
    assert files_under(tmp_path) == [name]  # no part file left behind
    assert ":" not in name and "+" not in name
    # The output host never saw the API token; the API did (so the journal records it).
    (fetch,) = emu.journal.of("file")
    assert "authorization" not in fetch.headers
    assert "authorization" in emu.journal.last("submit").headers
    assert_is_the_served_file(stored, tmp_path / name)


def test_a_blocking_task_keeps_its_output_in_a_plain_local_path(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = keep(airflow_env, emu, "it_outputs_blocking", str(tmp_path / "kept"))

    run.assert_states(edit="success")
    (stored,) = run.xcom("edit")["stored"]
    assert stored["uri"].startswith(f"file://{tmp_path}/kept/it_outputs_blocking/")
    assert_is_the_served_file(stored)


def test_a_downstream_task_reads_the_copy_back_from_memory_storage(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = keep(airflow_env, emu, "it_outputs_memory", "memory://runcomfy-it/kept")

    run.assert_states(edit="success", read_back="success")
    (stored,) = run.xcom("edit")["stored"]
    assert stored["uri"].startswith("memory://runcomfy-it/kept/it_outputs_memory/")
    assert run.xcom("read_back") == {"checked": [{"uri": stored["uri"], "bytes": stored["bytes"]}]}
    assert emu.journal.count("file") == 1


def test_a_sensor_keeps_the_outputs_of_a_request_submitted_elsewhere(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = keep(airflow_env, emu, "it_outputs_sensor", f"file://{tmp_path}")

    run.assert_states(submit="success", wait="success")
    result = run.xcom("wait")
    (stored,) = result["stored"]
    assert (
        f"/it_outputs_sensor/{safe_segment(run.run_id)}/wait/-1/{result['request_id']}_0.png" in stored["uri"]
    )
    assert_is_the_served_file(stored)


def test_a_download_cut_off_midway_leaves_no_file_and_the_retry_completes_it(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(output_bytes=3_000_000)  # big enough that the cut lands after bytes were written
    # Every attempt of the first try is cut off halfway; the retry's download is not.
    emu.add_fault("file", "truncate", after_bytes=1_500_000, times=DOWNLOAD_ATTEMPTS)
    out, probe = tmp_path / "out", tmp_path / "after-first-try.json"
    run = keep(airflow_env, emu, "it_outputs", f"file://{out}", probe=str(probe))

    run.assert_states(edit="success")
    assert try_number(run) == 2
    assert json.loads(probe.read_text()) == []  # after the failed try: no file, not even a part file
    fetches = emu.journal.of("file")
    assert [e.fault for e in fetches] == ["truncate"] * DOWNLOAD_ATTEMPTS + [None]
    assert emu.journal.count("submit") == 1  # the retry re-attached: the job was paid for once
    (stored,) = run.xcom("edit")["stored"]
    path = Path(stored["uri"].removeprefix("file://"))
    assert files_under(out) == [str(path.relative_to(out))]
    assert stored["bytes"] > 2_900_000
    assert_is_the_served_file(stored, path)


def test_an_output_over_the_cap_fails_the_task_plainly_and_keeps_nothing(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(output_bytes=3_000_000)
    run = keep(airflow_env, emu, "it_outputs_capped", f"file://{tmp_path}")

    run.assert_states(edit="failed")
    assert try_number(run) == 1  # no retry: a retry cannot make the file smaller
    assert "larger than max_output_bytes=1000000" in run.output
    assert "Raise max_output_bytes on the task" in run.output
    assert files_under(tmp_path) == []
    assert emu.journal.count("file") == 1


def test_a_retry_that_finds_its_copy_whole_does_not_download_it_again(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = keep(airflow_env, emu, "it_outputs_crash", f"file://{tmp_path}")

    run.assert_states(edit="success")
    assert try_number(run) == 2
    assert "worker lost after the copy was made" in run.output
    assert "already kept by an earlier try" in run.output
    assert emu.journal.count("submit") == 1
    assert emu.journal.count("file") == 1  # fetched by the first try only
    (stored,) = run.xcom("edit")["stored"]
    assert_is_the_served_file(stored)


def outputs_view_items(env: AirflowEnv, run: DagRun) -> list[dict[str, Any]]:
    """What the outputs view (``plugins.records.load_items``) reads of ``run`` from the metadata DB."""
    code = (
        "import json, sys\n"
        "from airflow.utils.session import create_session\n"
        "from airflow_provider_runcomfy.plugins.records import load_items\n"
        "with create_session() as session:\n"
        "    items = load_items(session, sys.argv[1], sys.argv[2])\n"
        "print(json.dumps([{k: getattr(i, k) for k in ('task_id', 'operator', 'state', 'request_id', "
        "'model_id')} for i in items]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, run.dag_id, run.run_id],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_outputs_view_names_the_model_of_a_typed_task_that_never_returned(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    """The model comes from the task's rendered ``model_id``, whatever its operator's class is called."""
    run = keep(airflow_env, emu, "it_outputs_lost", f"file://{tmp_path}")

    run.assert_states(edit="failed")
    assert run.xcom("edit") is None  # it never returned: its result names no model
    (item,) = outputs_view_items(airflow_env, run)
    assert item["operator"] == "LostBeforeReturn"
    assert item["request_id"] == run.xcom("edit", key="request_id")
    assert item["model_id"] == "blackforestlabs/flux-1-kontext/pro/edit"


def test_an_output_dir_nothing_can_write_fails_the_task_before_anything_is_paid_for(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = keep(airflow_env, emu, "it_outputs", "nosuchfs://bucket/kept")

    run.assert_states(edit="failed")
    assert try_number(run) == 1  # no retry: a retry cannot install a filesystem
    assert "no filesystem can write nosuchfs://" in run.output
    assert emu.journal.count("submit") == 0
