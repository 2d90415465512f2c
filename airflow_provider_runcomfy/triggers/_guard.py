"""The ``on_kill`` guard both RunComfy triggers share: cancel paid jobs only when nobody waits for them.

Airflow 3.3 calls a trigger's ``on_kill`` whenever this triggerer stops owning it "by user
action": a task marked failed/success, but also a cleared task (whose next try re-attaches to
the very same jobs) and, in 3.3.2, a trigger that merely moved to another triggerer (the task
is still ``deferred``). So the task's state decides: the jobs are cancelled only once the task
is finished, or when its state cannot be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.triggers.base import BaseTrigger

#: Task states after which nobody will wait for the job any more: the only ones ``on_kill`` cancels for.
FINISHED_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})

#: How long ``on_kill`` keeps at its cancel (Airflow allows it ``[triggerer] on_kill_timeout``, 30 s).
ON_KILL_SECONDS = 25


async def cancel_if_task_finished(
    trigger: BaseTrigger, what: str, cancel: Callable[[], Awaitable[None]]
) -> None:
    """Run ``cancel`` if the trigger's task is finished (or unknown), within ``ON_KILL_SECONDS``.

    :param trigger: the trigger being killed (its ``task_instance`` and ``log`` are used).
    :param what: the jobs, for the log lines ("RunComfy request abc", "the batch's 12 jobs").
    :param cancel: cancels the jobs and logs what became of them.
    """
    loop = asyncio.get_running_loop()
    work = loop.create_task(_cancel_unless_still_wanted(trigger, what, cancel))
    give_up = loop.time() + ON_KILL_SECONDS
    _PENDING[id(trigger)] = (work, give_up)
    try:
        await _outlast_cancellation(work, give_up)
    finally:
        _PENDING.pop(id(trigger), None)
    if not work.done():
        work.cancel()
        trigger.log.warning(
            "Could not cancel %s within %d s; what is still queued may run and be billed.",
            what,
            ON_KILL_SECONDS,
        )
        return
    work.result()  # an error is Airflow's to log


async def finish_pending_cancel(trigger: BaseTrigger) -> None:
    """For the trigger's ``cleanup``: wait out an ``on_kill`` cancel that Airflow stopped waiting for.

    Airflow awaits ``on_kill`` through ``asyncio.wait_for``; on Python 3.11 that gives up when the
    triggerer cancels the trigger once more meanwhile (Airflow 3.3.2 keeps doing so), and the
    trigger then completes and its log closes while the cancel still runs. Seen in CI (Celery, a
    cancel RunComfy answered 503 with ``Retry-After: 2``): the job was cancelled, but the line
    saying so never reached the task's log. Airflow awaits ``cleanup`` before "trigger completed".
    """
    pending = _PENDING.get(id(trigger))
    if pending is not None:
        await _outlast_cancellation(*pending)


#: The cancels ``on_kill`` has started and not finished, by trigger (``id``), with their deadline.
_PENDING: dict[int, tuple[asyncio.Task[None], float]] = {}


async def _outlast_cancellation(work: asyncio.Task[None], give_up: float) -> None:
    """Wait for ``work`` until ``give_up`` (loop time), whatever cancels the waiting task."""
    loop = asyncio.get_running_loop()
    while not work.done() and (left := give_up - loop.time()) > 0:
        try:
            await asyncio.wait({work}, timeout=left)
        except asyncio.CancelledError:
            # Airflow 3.3.2 keeps cancelling a trigger until it reports finished, also while
            # on_kill runs; giving in would drop the cancel and queued jobs would run and be
            # billed. The wait stays bounded by ON_KILL_SECONDS.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()


async def _cancel_unless_still_wanted(
    trigger: BaseTrigger, what: str, cancel: Callable[[], Awaitable[None]]
) -> None:
    state = await task_state(trigger)
    if state is not None and state not in FINISHED_TASK_STATES:
        trigger.log.info(
            "The task is %s (a trigger that moved, or a cleared task whose next try re-attaches "
            "to its jobs); not cancelling %s.",
            state,
            what,
        )
        return
    trigger.log.info("Task is %s: cancelling %s.", state or "gone", what)
    await cancel()


async def task_state(trigger: BaseTrigger) -> str | None:
    """The trigger's task instance state now, through the triggerer's task-state API; None if unknown."""
    ti = trigger.task_instance
    if ti is None:
        return None
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.comms import GetTaskStates

        map_index = ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None
        response = await task_runner.SUPERVISOR_COMMS.asend(
            GetTaskStates(dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=map_index)
        )
        states = getattr(response, "task_states", {}).get(ti.run_id, {})
        key = ti.task_id if map_index is None else f"{ti.task_id}_{map_index}"
        state = states.get(key)
    except Exception as error:
        trigger.log.warning("Could not read the task's state (%s); assuming a user killed it.", error)
        return None
    return str(state.value if hasattr(state, "value") else state) if state is not None else "none"
