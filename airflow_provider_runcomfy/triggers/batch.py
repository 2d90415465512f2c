"""``RunComfyBatchTrigger``: watches a batch's jobs in flight from the triggerer, holding no worker slot.

Deliberately thin: the loop is ``batch.window.Window`` (shared with the blocking mode)
and it never submits -- a trigger may run twice (a triggerer dies, another takes over),
and a paid submit must happen once, in the worker. Its arguments carry the window
(request ids, item keys, submit times: a few dozen bytes per job in flight, never per
item of the batch) and its event carries the outcomes of the finished jobs; the
worker records them in the ledger, copies the outputs, refills and defers again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import TriggerEvent

from airflow_provider_runcomfy.batch.window import Window, cancel_all
from airflow_provider_runcomfy.client.outcome import Outcome
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.triggers._base import FieldsTrigger
from airflow_provider_runcomfy.triggers._guard import cancel_if_task_finished


@dataclass(eq=False, repr=False)
class RunComfyBatchTrigger(FieldsTrigger):
    """Polls the jobs a batch has in flight and fires when the worker should wake to refill.

    :param model_id: the batch's model.
    :param window: ``[request_id, item key, submitted_at]`` of each job in flight.
    :param runcomfy_conn_id: the connection holding the token (never the token itself:
        trigger arguments are stored in the metadata database).
    :param poll_interval: seconds between reads of a job that is not done when expected.
    :param wake_count: finished jobs that make waking the worker worth it.
    :param max_wait: seconds a finished job waits for others before the worker wakes anyway.
    :param wake_at: ``time.time()`` to wake even if nothing finished (a refill paused by 429s).
    :param expected_seconds: how long this batch's jobs take, as far as known.
    :param deadline: ``time.time()`` of the batch's timeout: absolute, so a new triggerer keeps it.
    :param progress: ``{"total", "done", "started_at", "done_at_start"}`` for the progress line.
    :param cancel_on_kill: cancel the batch's queued jobs when a user marks the task failed/success.
    :param lead_seconds: the worker's resume time: jobs expected to end within it count as ended.
    :param owner: the id of the execution that deferred (``batch.owner``), echoed in the event.
    """

    model_id: str
    window: list[list[Any]]
    runcomfy_conn_id: str = RunComfyHook.default_conn_name
    poll_interval: float = 5.0
    wake_count: int = 1
    max_wait: float = 30.0
    wake_at: float | None = None
    expected_seconds: float | None = None
    deadline: float | None = None
    progress: dict[str, Any] | None = None
    cancel_on_kill: bool = True
    lead_seconds: float = 0.0
    owner: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = [list(entry) for entry in self.window]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait until the wake rule, the deadline or an error; yield one event with the outcomes."""
        window = Window.from_wait_args(self.serialize()[1], log_line=self.log.info)
        async with RunComfyHook(self.runcomfy_conn_id).ashared_client() as client:
            event = await window.wait(client)
        # The execution that deferred: on resume it checks it still owns the batch (``batch.owner``).
        yield TriggerEvent({**event, "owner": self.owner})

    def handover_note(self, payload: dict[str, Any]) -> str | None:
        """How many of the handed-over jobs succeeded (billed), and that a clear pays nothing for them.

        Counts, not ids: a wake can hand over dozens of jobs, and the manifest lists each one.
        """
        outcomes = [Outcome.from_event(o) for o in payload.get("outcomes") or () if isinstance(o, dict)]
        succeeded = sum(outcome.succeeded for outcome in outcomes)
        if not succeeded:
            return None
        return (
            f"RunComfy batch: {succeeded} of the {len(outcomes)} finished jobs handed to the task "
            "succeeded and were billed. If this task is nevertheless marked failed before it "
            "records them (Airflow's defer/resume race can do that after this line), clear it or "
            "let a retry run: it re-attaches to them from the batch's ledger and pays nothing "
            "again for them."
        )

    async def on_kill(self) -> None:
        """Cancel the batch's jobs when a user marked the deferred task failed or success -- only then.

        The same guard as ``RunComfyRequestTrigger.on_kill`` (``triggers._guard``): a cleared task
        (whose next try re-attaches to these jobs) or a trigger that merely moved to another
        triggerer cancels nothing; the task's state decides.
        """
        if self.cancel_on_kill and self.window:
            await cancel_if_task_finished(
                self, f"the batch's {len(self.window)} jobs in flight", self._cancel
            )

    async def _cancel(self) -> None:
        async with RunComfyHook(self.runcomfy_conn_id).ashared_client() as client:
            results = await cancel_all(client, [str(entry[0]) for entry in self.window], self.log)
        self.log.info(
            "Batch jobs: %d cancelled (not billed), %d already running or finished "
            "(RunComfy finishes and bills them), %d could not be cancelled.",
            sum(result is True for result in results.values()),
            sum(result is False for result in results.values()),
            sum(result is None for result in results.values()),
        )
