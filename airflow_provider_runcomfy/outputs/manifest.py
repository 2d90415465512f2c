"""The manifest of a batch: one JSON line per item, failures included.

``RunComfyBatchOperator`` writes its own ``manifest.jsonl`` (``batch.report``) with
``write_manifest``; ``read_manifest`` reads either kind back. The rest of this module is
for the older pattern, one mapped RunComfy task per image:

A batch that fans out over many images ends with some that failed. The
manifest is the record a pipeline (or a person) reads afterwards: for each
input, the request that ran it, what became of it, where its outputs were
kept and their sha256, or why it failed -- asked of RunComfy itself, since a
failed task leaves no return value, only the ``request_id`` XCom it pushed
when it submitted.

Call ``batch_records`` from a task downstream of the mapped task, with
``trigger_rule="all_done"`` so it runs whatever became of the items.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client import RunComfyError
from airflow_provider_runcomfy.client.outcome import Finality, finality
from airflow_provider_runcomfy.outputs.files import write_atomically

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook


def batch_records(
    context: Context,
    task_id: str,
    inputs: Sequence[Any],
    *,
    runcomfy_conn_id: str = "runcomfy_default",
) -> list[dict[str, Any]]:
    """One record per mapped instance of ``task_id`` in this DAG run; ``inputs[i]`` is map index ``i``.

    A record: ``map_index``, ``input``, ``status`` (``succeeded``, ``failed``, or the task's
    state when it did not run, e.g. ``upstream_failed``), ``task_state``, ``request_id``,
    ``runcomfy_status``, ``outputs`` (URLs), ``stored`` (the kept copies: uri, bytes,
    sha256, ...) and ``error`` (None for a success).
    """
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id]).get(ti.run_id, {})
    hook: RunComfyHook | None = None
    records = []
    for index, item in enumerate(inputs):
        state = states.get(f"{task_id}_{index}")
        result = ti.xcom_pull(task_ids=task_id, map_indexes=index)
        record: dict[str, Any] = {"map_index": index, "input": item, "task_state": state}
        if isinstance(result, dict) and result.get("status") == "succeeded":
            record.update(
                status="succeeded",
                request_id=result.get("request_id"),
                runcomfy_status="succeeded",
                outputs=list(result.get("outputs") or []),
                stored=list(result.get("stored") or []),
                error=None,
            )
        else:
            request_id = ti.xcom_pull(task_ids=task_id, map_indexes=index, key="request_id")
            if request_id and hook is None:
                from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

                hook = RunComfyHook(runcomfy_conn_id=runcomfy_conn_id)
            runcomfy_status, error = _why_not(hook, request_id, state)
            record.update(
                status="failed" if state in (None, "failed") else str(state),
                request_id=request_id,
                runcomfy_status=runcomfy_status,
                outputs=[],
                stored=[],
                error=error,
            )
        records.append(record)
    return records


def _why_not(hook: RunComfyHook | None, request_id: str | None, state: str | None) -> tuple[str | None, str]:
    """``(RunComfy's status, the error to record)`` of an item that has no result."""
    if hook is None or not request_id:
        if state not in (None, "failed"):
            return None, f"the task did not run ({state})"
        return (
            None,
            "no RunComfy request was submitted (see the task's log: its inputs may have been rejected)",
        )
    try:
        result = hook.get_result(request_id)
    except RunComfyError as error:
        return None, f"could not ask RunComfy about request {request_id}: {error.message}"
    status = result.status.value
    meaning = finality(result)
    if meaning is Finality.FAILED:
        return status, result.error_message or "RunComfy gave no reason"
    if meaning is Finality.SUCCEEDED:
        return (
            status,
            "the RunComfy job succeeded but the task failed (see its log: keeping the outputs may have failed)",
        )
    if meaning is Finality.CANCELLED:
        return status, "the RunComfy job was cancelled"
    return status, f"the task stopped while the RunComfy job was {status} (timeout, or the task was stopped)"


def write_manifest(path: ObjectStoragePath, records: Iterable[dict[str, Any]]) -> ObjectStoragePath:
    """Write ``records`` as JSON lines to ``path`` (any ``ObjectStoragePath``), atomically."""

    def write(sink: Any) -> None:
        for record in records:
            sink.write((json.dumps(record, ensure_ascii=False) + "\n").encode())

    return write_atomically(path, write)


def read_manifest(path: ObjectStoragePath) -> list[dict[str, Any]]:
    """The records of a manifest written by ``write_manifest``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tally(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts for a log line or an XCom: items, succeeded, failed, outputs kept, bytes kept."""
    stored = [copy for record in records for copy in record.get("stored") or []]
    succeeded = sum(record["status"] == "succeeded" for record in records)
    return {
        "images": len(records),
        "succeeded": succeeded,
        "failed": len(records) - succeeded,
        "outputs_stored": len(stored),
        "bytes_stored": sum(int(copy.get("bytes") or 0) for copy in stored),
    }
