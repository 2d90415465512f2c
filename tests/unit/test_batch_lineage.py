"""OpenLineage of ``RunComfyBatchOperator``: its input source, its ``output_dir``, its counts.

Asked as the OpenLineage listener asks (the provider's own ``ExtractorManager``), of a
real batch operator whose real ``_finish`` wrote a real manifest from a real ledger in a
local folder; OpenLineage's own serialiser shows what would be sent.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _helpers_batch import open_batch
from _helpers_lineage import extract, names
from airflow.utils.state import TaskInstanceState
from openlineage.client.serde import Serde

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.models import NANO_BANANA_EDIT as MODEL
from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.lineage import MAX_BATCH_LINEAGE_INPUTS

SIGNED = "https://bucket.s3.amazonaws.com/in/b.png?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"


def sent(lineage: Any) -> str:
    """Everything the listener would send of this lineage, as OpenLineage serialises it."""
    return "".join(
        Serde.to_json(part) for part in [*lineage.inputs, *lineage.outputs, *lineage.run_facets.values()]
    )


def batch_task(inputs: Any, output_dir: str = "s3://out-bucket/enriched") -> RunComfyBatchOperator:
    return RunComfyBatchOperator(task_id="enrich", model_id=MODEL, inputs=inputs, output_dir=output_dir)


def finish(task: RunComfyBatchOperator, folder: Path, states: list[str]) -> dict[str, Any]:
    """Record one ledger state per item, then end the batch as the worker does (``_finish``)."""
    run = open_batch(MODEL, folder, task.inputs)
    events: list[dict[str, Any]] = []
    for n, (item, state) in enumerate(zip(run.items, states, strict=True)):
        events.append({"key": item.key, "index": item.index, "state": state})
        if state in (L.SUCCEEDED, L.FAILED):
            events[-1].update(request_id=f"req-{n}", outcome={"status": state, "cost_usd": 0.039})
    run.ledger.append(events)
    context: Any = {"ti": SimpleNamespace(xcom_push=lambda **_: None)}
    return task._finish(context, run)


def inputs_of(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"p{i}", "image_urls": [f"https://images.example.com/in/{i}.png"]} for i in range(n)]


def test_a_finished_batch_reports_its_pictures_its_output_dir_and_its_counts(tmp_path: Path) -> None:
    given = inputs_of(3)
    given[1]["image_urls"].append(SIGNED)
    given[2]["image_urls"] = ["https://images.example.com/in/0.png"]  # the same picture again
    task = batch_task(given)
    result = finish(task, tmp_path, [L.SUCCEEDED, L.FAILED, L.READY])
    lineage = extract(task)
    assert names(lineage.inputs) == [
        ("https://images.example.com", "/in/0.png"),
        ("https://images.example.com", "/in/1.png"),
        ("https://bucket.s3.amazonaws.com", "/in/b.png"),
    ]
    assert names(lineage.outputs) == [("s3://out-bucket", "enriched")]
    facet = lineage.run_facets["runcomfyBatch"]
    assert facet.model_id == MODEL
    assert facet.counts["total"] == 3 and facet.counts["not_submitted"] == 1
    assert (facet.counts["submitted"], facet.counts["succeeded"], facet.counts["failed"]) == (2, 1, 1)
    assert facet.cost_usd == pytest.approx(result["cost_usd"]) == pytest.approx(0.078)
    assert facet.manifest == f"{tmp_path}/manifest.jsonl"
    # What goes out: the counts, and no pre-signed URL (it is a credential).
    wire = json.loads(Serde.to_json(facet))
    assert wire["counts"]["submitted"] == 2 and wire["_producer"]
    assert "Signature" not in sent(lineage) and "Credential" not in sent(lineage)


def test_inputs_from_a_json_lines_file_are_that_file(tmp_path: Path) -> None:
    task = batch_task("s3://in-bucket/batches/monday.jsonl", output_dir=f"file://{tmp_path}/out")
    lineage = extract(task, TaskInstanceState.FAILED)  # before it ended: no counts yet
    assert names(lineage.inputs) == [("s3://in-bucket", "batches/monday.jsonl")]
    assert names(lineage.outputs) == [("file", f"{tmp_path}/out")]
    assert "runcomfyBatch" not in lineage.run_facets


def test_a_large_batch_reports_its_first_distinct_pictures_only() -> None:
    task = batch_task(inputs_of(MAX_BATCH_LINEAGE_INPUTS + 50))
    lineage = extract(task)
    assert len(lineage.inputs) == MAX_BATCH_LINEAGE_INPUTS
    assert lineage.inputs[-1].name == f"/in/{MAX_BATCH_LINEAGE_INPUTS - 1}.png"


class Unreadable:
    """Inputs whose reading fails (a lazy sequence over a store that went away)."""

    def __iter__(self) -> Any:
        raise OSError("the store went away")


def test_lineage_never_fails_the_task(caplog: pytest.LogCaptureFixture) -> None:
    task = batch_task(Unreadable())
    with caplog.at_level(logging.WARNING):
        assert task.get_openlineage_facets_on_complete(None) is None
    assert "Could not build the OpenLineage facets of this batch" in caplog.text
