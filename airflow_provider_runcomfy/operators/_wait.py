"""Waiting for a RunComfy request and turning its ``Outcome`` into the task's result or failure.

Shared by the operators and ``RunComfyRequestSensor``: one mapping of outcomes
to task results, one loop shape, deferred or blocking. The trigger module is
imported only when a task defers, so a DAG file does not pay for it.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.client import (
    AuthenticationError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidInputError,
    InvalidModelError,
    JobTimeoutError,
    PermissionDeniedError,
    RunComfyError,
    SubmitOutcomeUnknownError,
)
from airflow_provider_runcomfy.client._wait import deadline_after
from airflow_provider_runcomfy.client.outcome import Outcome, OutcomeKind, describe_cancel, describe_status
from airflow_provider_runcomfy.compat import (
    AIRFLOW_RELEASE,
    AirflowFailException,
    note_deferral,
    resumes_an_earlier_try,
)
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.client import RequestStatus

#: The triggerer's own timeout is a backstop behind the trigger's deadline, not the deadline itself.
DEFER_TIMEOUT_MARGIN = policy.DEFER_TIMEOUT_MARGIN

#: Errors no retry can fix. A ``SubmitOutcomeUnknownError`` is among them because a retry
#: would submit again and could pay twice for the same image.
PERMANENT_ERRORS = (
    InvalidInputError,
    InvalidModelError,
    AuthenticationError,
    PermissionDeniedError,
    InsufficientBalanceError,
    InputRejectedError,
    SubmitOutcomeUnknownError,
)


def fail(error: RunComfyError) -> NoReturn:
    """Raise ``error`` so the task fails; without retries when no retry could fix it."""
    if isinstance(error, PERMANENT_ERRORS):
        raise AirflowFailException(error.message) from error
    raise error


class RunComfyWaitMixin:
    """Waiting for a RunComfy request and turning its outcome into the task's result.

    Shared by the operators and the sensor so that there is one mapping of
    outcomes and one loop shape, deferred or blocking.
    """

    runcomfy_conn_id: str
    poll_interval: float
    timeout: Any
    deferrable: bool
    log: Any
    defer: Any
    _in_flight: str | None = None
    #: Where to keep copies of the outputs (see ``outputs.storage``); None keeps none.
    output_dir: Any = None
    #: The largest output file kept; None is ``client.download``'s default (200 MB).
    max_output_bytes: int | None = None

    @cached_property
    def hook(self) -> RunComfyHook:
        """The hook of ``runcomfy_conn_id``, built once per task instance."""
        return RunComfyHook(runcomfy_conn_id=self.runcomfy_conn_id)

    def wait_for(self, context: Context, request_id: str, model_id: str | None) -> Any:
        """Wait for ``request_id``: defer to the triggerer, or poll here when not deferrable."""
        deadline = deadline_after(self.timeout)
        if self.deferrable:
            from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

            note_deferral(context)  # Airflow < 3.1.1: lets a retry tell its own event from an old one
            self.defer(
                trigger=RunComfyRequestTrigger(
                    request_id=request_id,
                    runcomfy_conn_id=self.runcomfy_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                    model_id=model_id,
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout) + DEFER_TIMEOUT_MARGIN if self.timeout else None,
            )
        self._in_flight = request_id
        try:
            result = self.hook.client.wait_for_result(
                request_id, poll_interval=self.poll_interval, deadline=deadline, on_status=self.log_status
            )
            outcome = Outcome.from_result(result, model_id)
        except RunComfyError as error:
            outcome = Outcome.from_error(error, request_id, model_id)
        finally:
            self._in_flight = None
        return self.conclude(context, outcome)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: its event is an ``Outcome`` (``Outcome.to_event``)."""
        return self.conclude(context, Outcome.from_event(event))

    def conclude(self, context: Context, outcome: Outcome) -> Any:
        """Return the outputs of a success, or fail with what happened and what to do."""
        if outcome.succeeded:
            self.log.info(
                "RunComfy request %s succeeded with %d output(s).", outcome.request_id, len(outcome.outputs)
            )
            return self.finish(context, outcome)
        if outcome.kind is OutcomeKind.TIMEOUT:
            request_id = outcome.request_id
            self.cancel_request(request_id, why=f"it did not finish within timeout={self.timeout} s")
            message = (
                f"RunComfy request {request_id} did not finish within timeout={self.timeout} s; "
                "raise `timeout` if the model needs longer."
            )
            fail(JobTimeoutError(message, request_id=request_id))
        fail(outcome.to_error())

    def finish(self, context: Context, outcome: Outcome) -> dict[str, Any]:
        """The task's return value for a succeeded request: small, JSON, URLs not files."""
        result: dict[str, Any] = {
            "request_id": outcome.request_id,
            "model_id": outcome.model_id,
            "status": outcome.kind.value,
            "outputs": list(outcome.outputs),
            "output": outcome.output,
            "created_at": outcome.created_at,
            "finished_at": outcome.finished_at,
            "cost_usd": outcome.cost_usd,
        }
        if keeps_copies(self.output_dir):
            result["stored"] = self.store_outputs(context, outcome.request_id, result["outputs"])
        return result

    def store_outputs(self, context: Context, request_id: str, urls: list[str]) -> list[dict[str, Any]]:
        """Copy the outputs to ``output_dir`` before their URLs expire; ``stored`` entries of the result."""
        from airflow_provider_runcomfy.outputs.storage import OutputStore

        cap: dict[str, Any] = (
            {} if self.max_output_bytes is None else {"max_output_bytes": self.max_output_bytes}
        )
        try:
            store = OutputStore.for_task(context, self.output_dir, logger=self.log, **cap)
            return [copy.as_dict() for copy in store.keep(request_id, urls)]
        except RunComfyError as error:
            if error.retryable:  # a broken transfer: the retry re-attaches and copies what is missing
                raise
            raise AirflowFailException(error.message) from error

    def check_output_dir(self) -> None:
        """Fail before submitting (and paying) when ``output_dir`` cannot be written by any filesystem."""
        if keeps_copies(self.output_dir):
            from airflow_provider_runcomfy.outputs.storage import resolve_output_dir

            resolve_output_dir(self.output_dir)

    def cancel_request(self, request_id: str, *, why: str) -> None:
        """Cancel a request nobody waits for any more; never fails the caller."""
        try:
            response = self.hook.cancel(request_id)
        except RunComfyError as error:
            self.log.warning("Could not cancel RunComfy request %s (%s): %s", request_id, why, error)
            return
        self.log.info("Cancelling because %s. %s", why, describe_cancel(request_id, response.cancelled))

    def log_status(self, status: RequestStatus) -> None:
        """Log each change of a request's state while blocking."""
        self.log.info(describe_status(status))

    def kill_in_flight(self) -> None:
        """Cancel the request a blocking wait is polling (``on_kill``)."""
        if self._in_flight:
            self.cancel_request(self._in_flight, why="the task was killed")

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Cancel the job before failing when the triggerer's own defer timeout fired first.

        On Airflow < 3.1.1 a retry can be handed the event of the try before it (see
        ``compat.RETRY_RESUMES_OLD_DEFERRAL``): that retry starts from ``execute`` instead,
        where it re-attaches to the job it paid for, as on every later release.
        """
        if resumes_an_earlier_try(context):
            self.log.warning(
                "Airflow %s handed this try (%s) the trigger event of an earlier try "
                "(apache/airflow#56704, fixed in 3.1.1); starting the try from the beginning instead.",
                ".".join(map(str, AIRFLOW_RELEASE)),
                context["ti"].try_number,
            )
            return self.execute(context)  # type: ignore[attr-defined]
        if next_method == "__fail__":
            ti = context["ti"]
            # Its own map index: without it Airflow pulls every mapped task's request id (a list).
            request_id = ti.xcom_pull(task_ids=ti.task_id, key="request_id", map_indexes=ti.map_index)
            if request_id:
                self.cancel_request(request_id, why="the deferral timed out")
        return super().resume_execution(next_method, next_kwargs, context)  # type: ignore[misc]


def keeps_copies(output_dir: Any) -> bool:
    """Whether ``output_dir`` asks for copies; a template that rendered None reads "None": no copies."""
    return bool(output_dir) and str(output_dir).strip() not in ("", "None")
