"""The batch enrichment example, unchanged, under ``airflow dags test`` against the emulator.

It must run as shipped (its image list holds public https URLs, which the
emulator stands in for, and one ``.invalid`` URL that fails on purpose), keep
the outputs, and record every item -- the failed one too -- in a manifest and
a contact sheet a person can open. The batch is one ``RunComfyBatchOperator``
task; the mapped variant (``runcomfy_batch_enrichment_mapped``) is checked too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import png
import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.contact_sheet import CELL, FAILED, GAP, MARK, SUCCEEDED, sheet_size
from airflow_provider_runcomfy.outputs.storage import safe_segment

from .conftest import REPO, AirflowEnv, DagRun

pytestmark = pytest.mark.integration

DAG_ID = "runcomfy_batch_enrichment"
SHIPPED = [
    line.strip()
    for line in (REPO / "dags_examples" / "data" / "batch_images.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.fixture
def batch_env(airflow_env: AirflowEnv) -> AirflowEnv:
    """The Airflow env with the example's data folder beside it, as it ships."""
    shutil.copytree(REPO / "dags_examples" / "data", airflow_env.dags / "data", dirs_exist_ok=True)
    return airflow_env


def run_folder(out: Path, run: DagRun) -> Path:
    """Where the batch task keeps its copies, manifest and contact sheet."""
    return out / run.dag_id / safe_segment(run.run_id) / "edit" / "-1"


def image_of(record: dict[str, Any]) -> str:
    return record["input"]["image_urls"][0]


def manifest_of(out: Path, run: DagRun) -> list[dict[str, Any]]:
    text = (run_folder(out, run) / "manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def sheet_of(out: Path, run: DagRun) -> tuple[int, int, list[list[int]]]:
    width, height, rows, info = png.Reader(filename=str(run_folder(out, run) / "contact_sheet.png")).asRGB8()
    assert info["bitdepth"] == 8
    return width, height, [list(row) for row in rows]


def pixel(rows: list[list[int]], x: int, y: int) -> tuple[int, ...]:
    return tuple(rows[y][x * 3 : x * 3 + 3])


def row_centre(index: int) -> int:
    return GAP + index * (CELL + GAP) + CELL // 2


def test_the_shipped_batch_keeps_the_good_images_and_records_the_failed_one(
    batch_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    assert len(SHIPPED) == 3 and SHIPPED[-1].split("/")[2].endswith(".invalid")
    run = batch_env.dags_test(DAG_ID, conf={"output_dir": f"file://{tmp_path}"}, env=emu.airflow_conn_env())

    assert run.task_states() == {"list_inputs": "success", "edit": "success", "summarize": "success"}, (
        run.output[-4000:]
    )
    assert run.state == "success"  # documented: the run succeeds when at least one image was edited

    records = manifest_of(tmp_path, run)
    assert [image_of(r) for r in records] == SHIPPED
    assert [r["status"] for r in records] == ["succeeded", "succeeded", "failed"]
    for record in records[:2]:
        (stored,) = record["stored"]
        path = Path(stored["uri"].removeprefix("file://"))
        assert path.parent == run_folder(tmp_path, run) / "outputs"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stored["sha256"]
        assert record["outputs"] == [stored["source_url"]] and record["error"] is None
    failed = records[2]
    assert failed["request_id"] and "missing-image.invalid" in failed["error"]
    assert failed["outputs"] == [] and failed["stored"] == []

    batch = run.xcom("edit")
    assert (batch["total"], batch["succeeded"], batch["failed"]) == (3, 2, 1)
    summary = run.xcom("summarize")
    assert summary["images"] == 3 and summary["succeeded"] == 2 and summary["failed"] == 1
    assert summary["bytes_stored"] == sum(r["stored"][0]["bytes"] for r in records[:2])

    width, height, rows = sheet_of(tmp_path, run)
    assert (width, height) == sheet_size(rows=3, columns=2)
    assert [pixel(rows, GAP + MARK // 2, row_centre(i)) for i in range(3)] == [SUCCEEDED, SUCCEEDED, FAILED]
    assert emu.journal.count("submit") == 3


def test_the_mapped_variant_still_runs_and_records_every_item(
    batch_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = batch_env.dags_test(
        "runcomfy_batch_enrichment_mapped",
        conf={"output_dir": f"file://{tmp_path}"},
        env=emu.airflow_conn_env(),
    )

    assert run.state == "success", run.output[-4000:]
    assert run.task_states()["edit[2]"] == "failed"
    folder = tmp_path / "runcomfy_batch_enrichment_mapped" / safe_segment(run.run_id)
    records = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["succeeded", "succeeded", "failed"]
    assert emu.journal.count("submit") == 3


def test_the_image_list_can_be_overridden_and_the_sheet_shows_decodable_pictures(
    batch_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = [emu.sample_url("portrait"), emu.sample_url("product"), "https://nowhere.invalid/x.png"]
    run = batch_env.dags_test(
        DAG_ID, conf={"image_urls": inputs, "output_dir": f"file://{tmp_path}"}, env=emu.airflow_conn_env()
    )

    assert run.state == "success", run.output[-4000:]
    assert [image_of(r) for r in manifest_of(tmp_path, run)] == inputs
    width, height, rows = sheet_of(tmp_path, run)
    assert (width, height) == sheet_size(rows=3, columns=2)
    input_x = GAP + MARK + GAP + CELL // 2
    output_x = input_x + CELL + GAP
    grey = (158, 158, 158)
    # Inputs and outputs decoded from PNG: real pictures, neither placeholder nor blank.
    # (Off the centre too: a placeholder's cross runs through the centre, and would pass there.)
    for y in (row_centre(0), row_centre(1)):
        for x in (input_x, input_x + 20, output_x, output_x + 20):
            assert pixel(rows, x, y) not in (grey, (236, 236, 236), (255, 255, 255))
    # The failed item: its input cannot be fetched (placeholder), it has no output (empty cell).
    assert pixel(rows, input_x + 20, row_centre(2)) == grey
    assert pixel(rows, output_x, row_centre(2)) == (236, 236, 236)


def test_a_batch_where_every_image_fails_fails_the_run_after_writing_the_manifest(
    batch_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = ["https://a.invalid/1.png", "https://b.invalid/2.png"]
    run = batch_env.dags_test(
        DAG_ID, conf={"image_urls": inputs, "output_dir": f"file://{tmp_path}"}, env=emu.airflow_conn_env()
    )

    assert run.state == "failed"
    assert run.task_states()["edit"] == "failed", run.output[-4000:]
    assert run.task_states()["summarize"] == "failed"
    assert [r["status"] for r in manifest_of(tmp_path, run)] == ["failed", "failed"]
    assert "No item of the batch succeeded" in run.output
