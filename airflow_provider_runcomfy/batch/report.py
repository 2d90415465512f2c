"""What a batch hands over: ``manifest.jsonl`` (one line per input, in input order) and a small return value.

Manifest line: ``index``, ``model_id``, ``input`` (or a digest of a large one), ``request_id``,
``status``, ``outputs`` (URLs), ``stored`` (``uri``, ``bytes``, ``sha256``, ...),
``error``, ``cost_usd``. Statuses: ``succeeded``, ``failed``, ``cancelled``,
``invalid`` (refused before any request, or by RunComfy's schema), ``unknown`` (a
submit whose answer was lost: see ``ledger``), ``not_submitted`` (the batch stopped
first: balance, budget or timeout) and ``in_flight`` (a job still running when the task
stopped; a retry re-attaches to it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch import ledger as L

if TYPE_CHECKING:
    from airflow_provider_runcomfy.batch.engine import BatchRun

STATUSES = ("succeeded", "failed", "cancelled", "invalid", "unknown", "not_submitted", "in_flight")

_STATUS = {
    L.SUCCEEDED: "succeeded",
    L.FAILED: "failed",
    L.CANCELLED: "cancelled",
    L.INVALID: "invalid",
    L.UNKNOWN: "unknown",
    L.INTENT: "unknown",
    L.READY: "not_submitted",
    L.SUBMITTED: "in_flight",
    L.FINISHED: "failed",
}


def manifest_rows(run: BatchRun) -> Iterator[dict[str, Any]]:
    """One manifest line per input, in input order (a generator: 100,000 lines are never all in memory twice)."""
    for item in run.items:
        record = run.record(item) or L.ItemRecord(key=item.key, index=item.index)
        outcome = record.outcome or {}
        status = _STATUS.get(record.state, "failed")
        error = record.error
        if record.state == L.FINISHED:
            error = "the job succeeded but its outputs were not kept yet; a retry of the task keeps them"
        elif record.state == L.READY:
            error = run.stop_message or "not submitted: the batch stopped before this item"
        elif record.state == L.SUBMITTED:
            error = "the job was still running when the task stopped; a retry re-attaches to it"
        cost = outcome.get("cost_usd")
        yield {
            "index": item.index,
            # Each line names its model, so a line read on its own (a spend report, a gallery) knows it.
            "model_id": run.model_id,
            "input": item.manifest_input(),
            "request_id": record.request_id,
            "status": status,
            "outputs": list(outcome.get("outputs") or []),
            "stored": [
                {k: copy.get(k) for k in ("uri", "bytes", "sha256", "content_type", "source_url")}
                for copy in record.stored
            ],
            "error": None if status == "succeeded" else error,
            "cost_usd": cost if isinstance(cost, (int, float)) else None,
        }


def summary(run: BatchRun, manifest_uri: str) -> dict[str, Any]:
    """The task's return value: counts, total cost, where the manifest is -- small whatever N is."""
    counts: Counter[str] = Counter()
    cost = 0.0
    costed = False
    for item in run.items:
        record = run.record(item)
        counts[_STATUS.get(record.state, "failed") if record else "not_submitted"] += 1
        value = ((record.outcome or {}) if record else {}).get("cost_usd")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cost += float(value)
            costed = True
    return {
        "total": len(run.items),
        **{status: counts.get(status, 0) for status in STATUSES},
        "cost_usd": round(cost, 6) if costed else None,
        "manifest": manifest_uri,
        "stopped": run.stopped,
        "stopped_by_budget": run.stopped == "budget",
        # Why it stopped submitting (the budget, the spend and the estimate in flight; the balance).
        "stop_reason": (run.stop_message or f"stopped: {run.stopped}") if run.stopped else None,
    }


def describe_counts(result: dict[str, Any]) -> str:
    """``"7 succeeded, 2 failed"``: the non-zero counts of a summary, for the log and messages."""
    return ", ".join(f"{result[status]} {status}" for status in STATUSES if result[status])
