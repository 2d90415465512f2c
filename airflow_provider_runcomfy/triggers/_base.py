"""The base of the RunComfy triggers: arguments declared once, and no event before Airflow can take it.

Arguments: a trigger must give back, in ``serialize()``, exactly the arguments that rebuild it
in another triggerer (``cls(**kwargs)``); writing each one in the signature, in ``__init__``
and in ``serialize`` invites the one that is forgotten in the third place. Here the
fields are the signature, the attributes and the serialized kwargs.

The defer/resume race (apache/airflow #66374, #67287, #71580, #72716): when a task defers,
its worker process exits and the executor reports that exit to the scheduler as a *success*.
A task's supervisor notices the exit only when its ``select()`` wakes, at the latest after
``[workers] min_heartbeat_interval`` (5 s by default), and the scheduler reads the report on
its next loop. If the trigger fires before that report was processed, the scheduler queues
the resumed task first and then reads "success" for a task that is queued or running: it
logs "state mismatch" and fails the task -- after RunComfy finished and billed the job.
Short image jobs fire exactly then. So a RunComfy trigger running in a triggerer holds its
event until ``resume_guard_seconds()`` after it started (a trigger starts after its task
deferred), a bound derived from those intervals; a job that ends later is not delayed at all.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_runcomfy.triggers._guard import finish_pending_cancel

#: Set to ``off`` to disable the hold: for ``bench/defer_race.py`` only, which shows the race
#: the hold prevents. Read in the triggerer.
RESUME_GUARD_ENV = "RUNCOMFY_RESUME_GUARD"

#: Slack on top of the intervals: the supervisor's own wrap-up after the exit, a result
#: backend's round trip (Celery) and a scheduler loop slower than its idle sleep on a busy
#: machine. ``bench/defer_race.py`` measures how late the scheduler really reads the exit.
RESUME_GUARD_MARGIN = 3.0


def resume_guard_seconds() -> float:
    """How long after its deferral a task's defer-exit is surely processed by the scheduler.

    ``[workers] min_heartbeat_interval`` (the supervisor's longest sleep before it sees the
    task process exit) plus two ``[scheduler] scheduler_idle_sleep_time`` (the executor's
    report read on the next loop, the resumed task queued on the one after) plus
    ``RESUME_GUARD_MARGIN``: 5 + 2 + 3 = 10 s with Airflow's defaults. Read from the
    triggerer's configuration, which a deployment shares with its workers and scheduler.
    """
    from airflow_provider_runcomfy.compat import airflow_conf

    conf = airflow_conf()
    heartbeat = conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0)
    idle = conf.getfloat("scheduler", "scheduler_idle_sleep_time", fallback=1.0)
    return max(0.0, heartbeat) + 2 * max(0.0, idle) + RESUME_GUARD_MARGIN


def runs_in_triggerer() -> bool:
    """Whether this trigger runs in Airflow's triggerer, the only place the race exists.

    ``airflow dags test`` runs a trigger in-process (no executor, no scheduler: no race) and a
    unit test runs it bare; neither holds events. The triggerer's runner installs its
    ``TriggerCommsDecoder`` as the task SDK's ``SUPERVISOR_COMMS``.
    """
    runner = sys.modules.get("airflow.jobs.triggerer_job_runner")
    decoder = getattr(runner, "TriggerCommsDecoder", None)
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return isinstance(decoder, type) and isinstance(comms, decoder)


def guard_hold() -> float:
    """Seconds a deferred trigger of this deployment keeps its event back (0 with the guard off).

    Also what a batch worker part compares a short wait with before it defers (``batch.step``).
    """
    if os.environ.get(RESUME_GUARD_ENV, "").strip().lower() == "off":
        return 0.0
    return resume_guard_seconds()


def resume_hold() -> float:
    """Seconds a trigger starting now keeps its event back: the guard in a triggerer, else none."""
    return guard_hold() if runs_in_triggerer() else 0.0


def hold_events(
    run: Callable[[Any], AsyncIterator[TriggerEvent]],
) -> Callable[[Any], AsyncIterator[TriggerEvent]]:
    """Wrap a trigger's ``run`` so that no event leaves before ``resume_hold()`` after it started.

    Each event's ``handover_note`` (``FieldsTrigger``), if any, is logged just before it leaves.
    """

    @functools.wraps(run)
    async def held(self: Any) -> AsyncIterator[TriggerEvent]:
        started, hold = time.monotonic(), resume_hold()
        async for event in run(self):
            wait = started + hold - time.monotonic()
            if wait > 0:
                self.log.info(
                    "Done %.1f s after this wait began; handing the outcome to Airflow in %.1f s, once "
                    "the scheduler has surely seen the task's worker exit (Airflow's defer/resume race).",
                    hold - wait,
                    wait,
                )
                await asyncio.sleep(wait)
            # The last line before Airflow's "Trigger fired event": if the race (or anything
            # else) then fails the task, its log still says the job succeeded and how to recover.
            try:
                line = self.handover_note(event.payload) if hasattr(self, "handover_note") else None
            except Exception as error:  # a log line must never cost the event of a paid job
                line = None
                self.log.warning("Could not describe the outcome handed over: %r", error)
            if line:
                self.log.info(line)
            yield event

    held.holds_events = True  # type: ignore[attr-defined]
    return held


class FieldsTrigger(BaseTrigger):
    """Base of the RunComfy triggers: subclasses are ``@dataclass(eq=False, repr=False)``.

    ``eq=False`` keeps identity equality (the triggerer tells triggers apart by object) and
    ``repr=False`` keeps ``BaseTrigger``'s repr (built from ``serialize``).

    Every subclass's ``run`` is wrapped with ``hold_events`` when the class is made, so that no
    RunComfy trigger (the single-job one, the batch one, any later one) can forget the guard
    against the defer/resume race: each deferral of each operator is covered.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "holds_events", False):
            cls.run = hold_events(run)  # type: ignore[method-assign, assignment]

    def __post_init__(self) -> None:
        BaseTrigger.__init__(self)

    def handover_note(self, payload: dict[str, Any]) -> str | None:
        """One log line for an event about to leave, logged just before it does; None for none.

        Subclasses say here which paid jobs the event hands over, so that a task Airflow then
        fails without resuming (the defer/resume race ends its log at "Trigger fired event")
        still says in its log that the jobs succeeded and that clearing it re-attaches for free.
        One line, ids and counts only: never a token or an output URL (pre-signed URLs are
        credentials).
        """
        return None

    async def cleanup(self) -> None:
        """Airflow's last call before "trigger completed": a cancel ``on_kill`` started ends first."""
        await finish_pending_cancel(self)
        await super().cleanup()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and arguments; ``cls(**kwargs)`` rebuilds the trigger after a restart."""
        arguments = {field.name: getattr(self, field.name) for field in fields(self)}  # type: ignore[arg-type]
        return f"{type(self).__module__}.{type(self).__qualname__}", arguments
