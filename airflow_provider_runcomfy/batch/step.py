"""What a batch does after a worker part's submits and copies: finish, wait for its jobs, or fail.

The core decides; the operator only maps the answer to Airflow (``RunComfyBatchOperator._advance``):
``FINISH`` to its return value (after the failure policy), ``WAIT`` to ``defer`` (or a wait in
the worker), ``FAIL`` and ``TIMED_OUT`` to a failed task (a retryable ``FAIL`` to an error Airflow
retries). So the cycle is tested without Airflow, and a reader finds the batch's next move here
rather than in the branches of an Airflow method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch import ledger as L

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow_provider_runcomfy.batch.engine import BatchRun
    from airflow_provider_runcomfy.batch.submitting import RefillResult

#: How often a batch waiting on another execution's intents looks at the ledger again.
LIMBO_RECHECK = 5.0
#: The shortest wait a worker part does in place rather than deferring. A deferral's round trip
#: (the trigger starts, holds its event back for Airflow's defer/resume race, a new task process
#: starts and reads the ledger) takes longer, so for jobs this close to their end it would hold
#: the batch up and cost a process start; the operator raises it to the trigger's hold.
STAY_SECONDS = 3.0
#: How long a worker part may go on waiting in place (from its start) before it defers anyway:
#: the part's memory and CPU stay bounded whatever N is, and the slot is given back now and then.
#: A time, not a count of waits: a deferral costs the batch at least the trigger's hold (10 s on
#: Airflow's defaults) when jobs are short, so this bounds that cost to about a seventh of the run
#: (10 s in 70), however small the refills are (20 waits lasted 30 s of a 5 s-job batch of 2 MB
#: outputs, ``bench/batch_scale.py``).
MAX_SECONDS_IN_PLACE = 60.0


class Action(StrEnum):
    """The batch's next move."""

    #: Nothing is in flight, to keep or to submit: write the manifest and end.
    FINISH = "finish"
    #: Wait for the jobs in flight (or until ``wake_at``), then run another worker part.
    WAIT = "wait"
    #: No submit of this batch can succeed any more (a token or model refused): fail, say ``message``.
    FAIL = "fail"
    #: The batch's ``timeout`` passed: cancel the queued jobs, write the manifest, fail (a retry resumes).
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Step:
    """The batch's next move and what it needs.

    :param action: finish, wait, fail or timed out.
    :param message: why it fails (``FAIL``).
    :param retryable: a retry of the task can get past the failure (``FAIL``): the wait could not
        read RunComfy for a passing reason, and the retry re-attaches to the jobs in flight.
    :param window: ``[request_id, key, submitted_at]`` of the jobs to wait for (``WAIT``).
    :param wake_at: ``time.time()`` by which the worker must run again even if no job ended
        (a 429 pause, another execution's intents, copies to try again); None: when jobs end.
    :param tail: nothing more is to be submitted: the wait is for the last jobs only.
    """

    action: Action
    message: str | None = None
    retryable: bool = False
    window: list[list[Any]] = field(default_factory=list)
    wake_at: float | None = None
    tail: bool = False


def after_refill(refill: RefillResult) -> Step | None:
    """``FAIL`` when the refill met an error no later submit escapes; None to go on (copy, then ``next_step``)."""
    if refill.fatal is None:
        return None
    return Step(
        Action.FAIL,
        message=f"{refill.fatal.message} Nothing more is submitted; the jobs already in flight are recorded "
        "and a clear of the task re-attaches to them.",
    )


def after_wait(event: Mapping[str, Any]) -> Step | None:
    """What the end of a wait (a trigger's event, or the blocking wait's) asks for; None: go on.

    ``"timeout"``: the batch's deadline passed during the wait (``TIMED_OUT``). ``"error"``: the
    wait could not read RunComfy (``FAIL``, retryable when the event says a retry may get past it;
    either way the jobs in flight stay recorded, so the next try or a clear waits for them again).
    ``"ready"``: jobs ended or the wake time came, so the worker part goes on.
    """
    status = event.get("status")
    if status == "timeout":
        return Step(Action.TIMED_OUT)
    if status != "error":
        return None
    message = str(event.get("message") or "RunComfy could not be read.")
    if event.get("retryable"):
        return Step(
            Action.FAIL,
            message=message + " A retry of the task re-attaches to the jobs in flight.",
            retryable=True,
        )
    return Step(
        Action.FAIL, message=message + " The jobs in flight are recorded; a clear re-attaches to them."
    )


def next_step(
    run: BatchRun, refill: RefillResult, *, deadline: float | None, now: float | None = None
) -> Step:
    """After the refill and the copies: finish, stop at the deadline, or wait (for what, until when)."""
    now = time.time() if now is None else now
    window = run.in_flight()
    waiting_to_submit = (run.ready_count() > 0 or run.unchecked_count() > 0) and not run.stopped
    limbo_ends_at = run.limbo_ends_at()
    if not window and not run.records(L.FINISHED) and not waiting_to_submit and limbo_ends_at is None:
        return Step(Action.FINISH)
    if deadline is not None and now >= deadline:
        return Step(Action.TIMED_OUT)
    wake_at = refill.paused_until
    if limbo_ends_at is not None:
        # Another execution's intents: look again soon for their request ids (or withdrawal).
        wake_at = min(wake_at or limbo_ends_at, limbo_ends_at, now + LIMBO_RECHECK)
    if not window and wake_at is None:
        # Nothing to watch: submits were refused (try again shortly), or copies failed
        # for a passing reason (try them again a little later).
        wake_at = now + (1.0 if waiting_to_submit else 5.0)
    return Step(Action.WAIT, window=window, wake_at=wake_at, tail=not waiting_to_submit)


def waits_in_place(
    step: Step,
    expected_wake: float | None,
    *,
    part_started: float,
    now: float,
    stay_seconds: float = STAY_SECONDS,
) -> bool:
    """Wait for the next refill in the worker (True) or defer (False).

    In place only when the jobs are expected to be due within ``stay_seconds`` (short jobs, or
    a part whose submits and copies took most of the jobs' run time) and the part started
    (``part_started``, ``time.time()``) less than ``MAX_SECONDS_IN_PLACE`` ago. ``expected_wake``
    is the in-place wait's own estimate (``Window.expected_wake``); None when there is no
    estimate (defer).
    """
    if step.action is not Action.WAIT or expected_wake is None or now - part_started >= MAX_SECONDS_IN_PLACE:
        return False
    return expected_wake - now <= max(STAY_SECONDS, stay_seconds)


def in_place_until(expected_wake: float, *, now: float, stay_seconds: float = STAY_SECONDS) -> float:
    """When a wait in place gives up although the jobs it waits for have not ended (``time.time()``).

    ``STAY_SECONDS`` after their expected end, or -- when that is sooner -- as long as a deferral
    made now would take to bring the worker back at the earliest (the trigger's hold): waiting
    that long costs the batch nothing a deferral would have saved. Jobs whose run time the batch
    has not learned yet are expected after one ``poll_interval``; this is what catches them.
    """
    return max(expected_wake + STAY_SECONDS, now + stay_seconds)
