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


def failure_message(
    result: dict[str, Any], *, stopped: str | None, stop_message: str | None, max_failed_items: int | None
) -> str | None:
    """Why the finished batch fails the task, by its failure policy; None when it succeeds.

    A plain answer rather than an exception, so the policy is decided without Airflow and
    the operator chooses how a failure reaches Airflow (it fails the task without retries:
    a retry would meet the same items and the same answer).
    """
    counts = describe_counts(result)
    uri = result["manifest"]
    not_ok = result["total"] - result["succeeded"] - result["invalid"]
    if stopped == "balance":
        return (
            f"RunComfy says the account is out of balance: {result['not_submitted']} items were not submitted "
            f"({stop_message}). Top up, then clear the task: finished items are not paid for again. "
            f"Manifest: {uri}"
        )
    if result["succeeded"] == 0 and not_ok > 0:
        return f"No item of the batch succeeded ({counts}). Manifest: {uri}"
    if max_failed_items is not None and not_ok > max_failed_items:
        return (
            f"{not_ok} items did not succeed, more than max_failed_items={max_failed_items} ({counts}). "
            f"Manifest: {uri}"
        )
    return None


def timeout_message(result: dict[str, Any], timeout: float | None) -> str:
    """What a batch stopped by its ``timeout`` says (a retry of the task resumes it)."""
    return (
        f"The batch did not finish within timeout={timeout} s ({describe_counts(result)}); queued jobs were "
        f"cancelled. A retry resumes it: finished items are not paid for again. Manifest: {result['manifest']}"
    )


def write_batch_manifest(run: BatchRun) -> str:
    """Write ``manifest.jsonl`` and fold the ledger into its checkpoint; the manifest's URI.

    The checkpoint is forced here because a finished batch's next reader (a clear, the
    outputs view) should load one file, not every segment of the last worker part.
    """
    from airflow_provider_runcomfy.outputs.manifest import write_manifest

    path = write_manifest(run.folder / "manifest.jsonl", manifest_rows(run))
    run.ledger.compact(force=True)
    return str(path)
