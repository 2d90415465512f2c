"""The triggerer's task-state channel, stood in for: what a trigger's ``on_kill`` asks before cancelling.

It lets a test choose the state quickly; both triggers' on_kill tests use it. It answers
under the key Airflow's execution API uses (``<task_id>_<map_index>`` for a mapped task
instance), but a stand-in cannot prove that key: ``test_trigger.py``'s
``test_on_kill_reads_a_mapped_tasks_state_through_airflows_real_task_state_api`` asks Airflow's
own request handler, API route and database, and fails if the guard looks under another key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.sdk.execution_time import task_runner
from airflow.sdk.execution_time.comms import TaskStatesResult


@dataclass
class TaskInstance:
    dag_id: str = "d"
    task_id: str = "edit"
    run_id: str = "manual__1"
    map_index: int = -1


class TaskStates:
    """Answers GetTaskStates with a given state (after ``delay`` seconds), and keeps what it was asked."""

    def __init__(self, state: str | None, delay: float = 0.0) -> None:
        self.state = state
        self.delay = delay
        self.asked: list[Any] = []

    async def asend(self, msg: Any) -> TaskStatesResult:
        self.asked.append(msg)
        await asyncio.sleep(self.delay)  # a slow answer, as a fresh triggerer gives: a fault, not a wait
        key = msg.task_ids[0] if msg.map_index is None else f"{msg.task_ids[0]}_{msg.map_index}"
        return TaskStatesResult(task_states={msg.run_ids[0]: {key: self.state}})


def install(state: str | None, monkeypatch: pytest.MonkeyPatch) -> TaskStates:
    """Make the triggerer's channel answer ``state`` for the rest of the test."""
    comms = TaskStates(state)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    return comms


async def kill_while_airflow_recancels(on_kill: Coroutine[Any, Any, None]) -> None:
    """Run ``on_kill`` while cancelling it every 0.1 s, as Airflow 3.3.2's triggerer does until it ends."""
    killing = asyncio.ensure_future(on_kill)
    for _ in range(10):
        await asyncio.sleep(0.1)  # Airflow's cadence of re-cancelling, not a synchronisation
        killing.cancel()
    # Generous (the guard itself gives up after ON_KILL_SECONDS, 25 s); a hang fails loudly.
    await asyncio.wait({killing}, timeout=60)
    assert killing.done(), "on_kill did not return within 60 s"


async def airflow_kills(trigger: Any, *, recancel_every: float = 0.1) -> None:
    """What Airflow 3.3.2's triggerer does to a trigger a user acted on, re-cancelling it meanwhile.

    Its ``run_trigger``: ``await asyncio.wait_for(trigger.on_kill(), ...)``, a ``CancelledError``
    from that swallowed, then ``await trigger.cleanup()`` in ``finally``, then "trigger
    completed" (when this returns). On Python 3.11 a second cancel makes ``wait_for`` give up
    on ``on_kill``, which is why ``cleanup`` must wait for the cancel.
    """

    async def run_trigger() -> None:
        try:
            await asyncio.wait_for(trigger.on_kill(), timeout=30)
        except asyncio.CancelledError:
            pass
        finally:
            await trigger.cleanup()

    task = asyncio.ensure_future(run_trigger())
    for _ in range(300):  # at most 30 s of re-cancelling
        await asyncio.sleep(recancel_every)
        if task.done():
            break
        task.cancel()
    await asyncio.wait({task}, timeout=60)
    assert task.done(), "the trigger did not complete within 60 s"
