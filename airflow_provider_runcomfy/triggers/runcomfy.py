"""``RunComfyRequestTrigger``: waits for a RunComfy job in the triggerer, holding no worker slot.

The event it fires is the whole hand-over back to the task: Airflow 3.3.2's
``dags test`` drops ``defer(kwargs=...)`` on resume, so everything the task
needs travels in the event: an ``Outcome`` (``client.outcome``) as ``to_event()``.
The trigger is deliberately thin: the loop is the client's ``wait_for_result``,
the meaning of each answer is ``client.outcome``'s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import TriggerEvent

from airflow_provider_runcomfy.client import RunComfyError
from airflow_provider_runcomfy.client.outcome import Outcome, describe_cancel, describe_status
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.policy import MAX_CONSECUTIVE_POLL_ERRORS
from airflow_provider_runcomfy.triggers._base import FieldsTrigger
from airflow_provider_runcomfy.triggers._guard import cancel_if_task_finished

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client import AsyncRunComfyClient, RequestState, RequestStatus


@dataclass(eq=False, repr=False)
class RunComfyRequestTrigger(FieldsTrigger):
    """Polls a RunComfy request until it finishes, then fires one small event.

    :param request_id: the RunComfy request to wait for.
    :param runcomfy_conn_id: the Airflow connection holding the token (the token itself is
        never a trigger argument: trigger arguments are stored in the metadata database).
    :param poll_interval: seconds between status polls.
    :param deadline: wall-clock time (``time.time()``) at which the wait gives up with a
        ``timeout`` event; absolute, so that a triggerer restart does not reset it.
    :param model_id: the model the request runs, carried into the event.
    :param max_consecutive_errors: transient poll failures in a row tolerated before an ``error`` event.
    :param cancel_on_kill: cancel the job when a user marks the deferred task failed or
        success, or clears it.
    """

    request_id: str
    runcomfy_conn_id: str = RunComfyHook.default_conn_name
    poll_interval: float = 5.0
    deadline: float | None = None
    model_id: str | None = None
    max_consecutive_errors: int = MAX_CONSECUTIVE_POLL_ERRORS
    cancel_on_kill: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._logged_state: RequestState | None = None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for the job and yield its ``Outcome`` (``Outcome.to_event``) as one event."""
        try:
            async with self._client() as client:
                result = await client.wait_for_result(
                    self.request_id,
                    poll_interval=self.poll_interval,
                    deadline=self.deadline,
                    on_status=self._log_status,
                    max_consecutive_errors=self.max_consecutive_errors,
                )
            outcome = Outcome.from_result(result, self.model_id)
        except RunComfyError as error:
            outcome = Outcome.from_error(error, self.request_id, self.model_id)
        yield TriggerEvent(outcome.to_event())

    def handover_note(self, payload: dict[str, Any]) -> str | None:
        """For a job that succeeded (and was billed): its request id, and that a clear pays nothing.

        Nothing for other outcomes: the task fails for them anyway, saying why.
        """
        outcome = Outcome.from_event(payload)
        if not outcome.succeeded:
            return None
        cost = f" (${outcome.cost_usd:g})" if outcome.cost_usd is not None else ""
        return (
            f"RunComfy request {outcome.request_id} succeeded and was billed{cost}; handing it to "
            "the task. If this task is nevertheless marked failed (Airflow's defer/resume race can "
            "do that after this line), clear it or let a retry run: it re-attaches to this request "
            "and pays nothing again."
        )

    async def on_kill(self) -> None:
        """Cancel the job when a user marked the deferred task failed or success -- and only then.

        A cleared task (whose next try re-attaches to this very job) and a trigger that merely
        moved to another triggerer also reach here; ``triggers._guard`` lets the task's state decide.
        """
        if self.cancel_on_kill:
            await cancel_if_task_finished(self, f"RunComfy request {self.request_id}", self._cancel)

    async def _cancel(self) -> None:
        async with self._client() as client:
            response = await client.cancel(self.request_id)
        self.log.info(describe_cancel(self.request_id, response.cancelled))

    def _client(self) -> AbstractAsyncContextManager[AsyncRunComfyClient]:
        # The process's shared pool for this connection: the connection is read once per run,
        # and a triggerer with thousands of these polls through one set of connections.
        return RunComfyHook(self.runcomfy_conn_id).ashared_client()

    def _log_status(self, status: RequestStatus) -> None:
        # A new state is news (INFO); a queue position that moved is not (DEBUG): behind
        # thousands of queued jobs it moves on every poll, and a triggerer would log a line per
        # poll per job.
        news = status.status is not self._logged_state
        self._logged_state = status.status
        self.log.log(logging.INFO if news else logging.DEBUG, describe_status(status))
