"""The RunComfy status of a job whose task recorded none: asked of RunComfy, for a failed task.

A task can fail while its job goes on to succeed and be billed (Airflow's defer/resume
race, a worker lost, a copy that could not be written): it then leaves a ``request_id``
XCom and no return value, and the outputs tab used to say "RunComfy status: —". The
person looking wants to know whether they paid, and what to do. So the view asks
RunComfy (through the hook of ``runcomfy_default``, the same connection whose host
decides the URL policy) and says: the job succeeded, clearing the task re-attaches to
it and keeps its outputs without paying again.

Answers are kept a short while per request id: a page reload does not ask again, and a
job that is still running is asked again soon.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from airflow_provider_runcomfy.client.outcome import Finality, finality

log = logging.getLogger(__name__)

#: Seconds an answer is kept: a finished job's for long (it cannot change), a running one's briefly.
FINISHED_TTL = 600.0
RUNNING_TTL = 10.0
#: Task states in which the task will not record a status by itself any more.
STOPPED_STATES = frozenset({"failed", "up_for_retry", "upstream_failed", "success", "skipped", "removed"})


@dataclass(frozen=True)
class AskedStatus:
    """RunComfy's answer for one request: its status, and its error message when it failed."""

    #: RunComfy's word, shown as is.
    status: str | None
    error: str | None = None
    #: Why RunComfy could not be asked (no status then).
    problem: str | None = None
    #: What the word means (``client.outcome.finality``, the one rule); None when not asked.
    finality: Finality | None = None


_ANSWERS: dict[str, tuple[float, AskedStatus]] = {}
_LOCK = threading.Lock()


def ask_runcomfy(request_id: str, conn_id: str = "runcomfy_default") -> AskedStatus:
    """RunComfy's status of ``request_id`` (blocks: call from a worker thread)."""
    now = time.monotonic()
    with _LOCK:
        kept = _ANSWERS.get(request_id)
    if kept and kept[0] > now:
        return kept[1]
    from airflow_provider_runcomfy.client import RunComfyError
    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

    try:
        result = RunComfyHook(runcomfy_conn_id=conn_id).get_result(request_id)
        meaning = finality(result)
        error = result.error_message if meaning is Finality.FAILED else None
        answer = AskedStatus(result.status.value, error[:500] if error else None, finality=meaning)
    except RunComfyError as error:
        answer = AskedStatus(None, problem=error.message[:300])
    except Exception as error:  # no such connection, a malformed one: the page still renders
        log.warning("Could not ask RunComfy about request %s: %s", request_id, type(error).__name__)
        answer = AskedStatus(
            None, problem=f"the connection {conn_id!r} could not be used ({type(error).__name__})"
        )
    finished = answer.finality is not None and answer.finality.is_outcome
    with _LOCK:
        _ANSWERS[request_id] = (now + (FINISHED_TTL if finished else RUNNING_TTL), answer)
        if len(_ANSWERS) > 10_000:
            _ANSWERS.clear()
    return answer


def advice(state: str | None, asked: AskedStatus) -> str | None:
    """What the outputs tab tells a person whose task stopped with this RunComfy status."""
    if state not in ("failed", "up_for_retry"):
        return None
    if asked.finality is Finality.SUCCEEDED:
        return (
            "The task failed, but RunComfy finished this job and billed it. Clearing the task "
            "re-attaches to the job and keeps its outputs without paying again."
        )
    if asked.status and asked.finality in (Finality.WAITING, Finality.NOT_WRITTEN):
        return (
            f"The task failed while the RunComfy job was {asked.status.replace('_', ' ')}. Clearing the "
            "task re-attaches to the same job without paying again; to stop paying for it, cancel it."
        )
    if asked.finality is Finality.CANCELLED:
        return "The RunComfy job was cancelled: it has no outputs."
    if asked.finality is Finality.FAILED:
        return "RunComfy failed this job" + (f": {asked.error}" if asked.error else ".")
    if asked.problem:
        return f"The task failed; RunComfy could not be asked about its job: {asked.problem}"
    return None
