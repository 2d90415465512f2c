"""What a batch hands over when it stops by its budget, and the model on each manifest line.

A real ledger in a local folder, real submits to the emulator (jobs stay queued: nothing
finishes, nothing is paid beyond the submit), the real budget (``models.catalog.BatchGuard``)
priced by the model info the emulator publishes ($0.04 per flux edit).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _helpers_batch import open_batch, ready

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import BatchItem
from airflow_provider_runcomfy.batch.pacing import SubmitPacer
from airflow_provider_runcomfy.batch.report import manifest_rows, summary
from airflow_provider_runcomfy.batch.submitting import BatchSpend, RefillResult
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL
from airflow_provider_runcomfy.models.catalog import BatchGuard
from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.plugins.records import Item, item_from_manifest_line

LOG = logging.getLogger("test_batch_report")


def open_run(folder: Path, queued_emu: RunComfyEmulator, n: int) -> BatchRun:
    """A worker part's view of the batch, its ledger read back from ``folder``."""
    inputs = [{"prompt": f"p{i}", "image_url": queued_emu.sample_url()} for i in range(n)]
    return open_batch(MODEL, folder, inputs, max_in_flight=100)


def budget(queued_emu: RunComfyEmulator, max_cost_usd: float) -> BatchGuard:
    """The batch's budget, priced from the emulator's model info (read once, as in the worker)."""
    fetch = RunComfyClient(queued_emu.token, base_url=queued_emu.base_url).get_model
    return BatchGuard(MODEL, "test", fetch, max_cost_usd=max_cost_usd).read_price()


async def refill(
    run: BatchRun, client: AsyncRunComfyClient, may_submit: Any, stop_reason: Any = None
) -> RefillResult:
    def prepare(items: Sequence[BatchItem]) -> list[Any]:
        return [item.input for item in items]

    def validate(model_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return await run.refill(
        client,
        SubmitPacer(max_concurrency=1, concurrency=1),
        prepare=prepare,
        validate=validate,
        may_submit=may_submit,
        try_number=1,
        stop_reason=stop_reason,
    )


async def test_a_batch_stopped_by_its_budget_says_why_in_the_return_value_and_the_manifest(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    guard = budget(queued_emu, max_cost_usd=0.10)  # two $0.04 jobs in flight, not a third

    def may_submit(item: BatchItem, spend: BatchSpend) -> bool:
        return guard.may_submit(item.input, spent_usd=spend.spent_usd, in_flight=spend.in_flight)

    run = ready(open_run(tmp_path, queued_emu, 5))
    result = await refill(run, queued_client, may_submit, lambda: guard.budget.stopped_reason)
    assert (result.stopped, result.submitted) == ("budget", 2)
    assert len(queued_emu.jobs) == 2
    # The budget, the recorded spend and the estimate of the jobs in flight.
    assert result.message is not None
    assert (
        "max_cost_usd=$0.1000 reached: $0.0000 spent and 2 job(s) in flight (about $0.0800)" in result.message
    )

    # A later worker part (a new process, after a deferral) reads it back from the ledger.
    later = open_run(tmp_path, queued_emu, 5)
    value = summary(later, "file:///manifest.jsonl")
    assert value["stopped_by_budget"] is True
    assert value["stop_reason"] == result.message
    not_submitted = [row for row in manifest_rows(later) if row["status"] == "not_submitted"]
    assert len(not_submitted) == 3
    assert all(row["error"] == result.message for row in not_submitted)


async def test_a_may_submit_override_that_refuses_without_a_reason_still_leaves_one(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    run = ready(open_run(tmp_path, queued_emu, 3))
    result = await refill(run, queued_client, lambda item, spend: spend.submitted < 1)
    assert (result.stopped, result.submitted) == ("budget", 1)
    assert summary(open_run(tmp_path, queued_emu, 3), "m")["stop_reason"] == (
        "may_submit refused item 1 with $0.0000 spent and 1 job(s) in flight; no further item is "
        "submitted, the jobs in flight are finished and kept"
    )


def test_a_batch_that_did_not_stop_has_no_stop_reason(tmp_path: Path, queued_emu: RunComfyEmulator) -> None:
    value = summary(ready(open_run(tmp_path, queued_emu, 2)), "m")
    assert (value["stopped"], value["stopped_by_budget"], value["stop_reason"]) == (None, False, None)


def test_the_operator_gives_the_budgets_reason_and_reads_no_price_for_it(
    queued_emu: RunComfyEmulator,
) -> None:
    task = RunComfyBatchOperator(
        task_id="batch", model_id=MODEL, inputs=[], output_dir="/tmp/unused", max_cost_usd=0.05
    )
    assert task._stop_reason() is None  # no guard built yet: nothing is fetched to say why
    guard = budget(queued_emu, max_cost_usd=0.05)
    task.spend_guard = guard  # what ``_check_budget`` builds in the worker
    assert guard.may_submit({"prompt": "p"}, spent_usd=0.04, in_flight=0) is False
    reason = task._stop_reason()
    assert reason is not None and reason.startswith("max_cost_usd=$0.0500 reached: $0.0400 spent")


def spend_report() -> Any:
    """The example spend-report DAG's module (its functions read manifests as ops would)."""
    path = Path(__file__).resolve().parents[2] / "dags_examples" / "runcomfy_spend_report.py"
    spec = importlib.util.spec_from_file_location("runcomfy_spend_report_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_manifest_line_names_its_model_for_the_gallery_and_the_spend_report(
    tmp_path: Path, queued_emu: RunComfyEmulator
) -> None:
    run = ready(open_run(tmp_path, queued_emu, 2))
    first = run.items[0]
    run.ledger.append(
        [
            {"key": first.key, "state": L.SUBMITTED, "request_id": "req-0", "submitted_at": 1.0},
            {
                "key": first.key,
                "state": L.SUCCEEDED,
                "outcome": {"status": "succeeded", "outputs": ["https://cdn/o.png"], "cost_usd": 0.04},
            },
        ]
    )
    rows = list(manifest_rows(run))
    assert [row["model_id"] for row in rows] == [MODEL, MODEL]
    assert list(rows[0])[:3] == ["index", "model_id", "input"]
    # A line read on its own (the outputs view's gallery, a spend report without the ledger
    # beside it) knows its model.
    shown = item_from_manifest_line(Item("d", "r", "batch", -1), 0, rows[0])
    assert (shown.model_id, shown.request_id, shown.cost_usd) == (MODEL, "req-0", 0.04)
    summed = spend_report().summarize_manifest("m", [json.dumps(row) for row in rows], header={})
    assert set(summed["models"]) == {MODEL}
    assert summed["models"][MODEL]["cost_usd"] == pytest.approx(0.04)
