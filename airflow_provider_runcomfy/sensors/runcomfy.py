"""``RunComfyRequestSensor``: waits for a RunComfy request submitted elsewhere.

Typical use: one task submits (and pushes ``request_id`` to XCom), another
waits with ``request_id="{{ ti.xcom_pull(task_ids='submit', key='request_id') }}"``.
The wait and the outcome handling are the operators' own (``RunComfyWaitMixin``),
so the sensor returns the same result shape; a poke reads each answer with the same
``finality`` rule as every other waiter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.sensor import BaseSensorOperator, PokeReturnValue

from airflow_provider_runcomfy.arguments import keep_wait_arguments
from airflow_provider_runcomfy.client import RunComfyError, validate_request_id
from airflow_provider_runcomfy.client.outcome import Finality, Outcome, finality
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.operators._wait import RunComfyWaitMixin, fail
from airflow_provider_runcomfy.operators.links import RunComfyOutputLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class RunComfyRequestSensor(RunComfyWaitMixin, BaseSensorOperator):
    """Waits until a RunComfy request finishes; succeeds with its outputs, fails with its error.

    Deferrable by default: the wait runs in the triggerer. With ``deferrable=False`` it
    pokes like any sensor (``mode="reschedule"`` frees the worker slot between pokes).
    The sensor does not cancel the request when it times out or is killed: the job
    belongs to whoever submitted it.

    :param request_id: the request to wait for (templated).
    :param model_id: the model, when known, carried into the result (templated).
    :param runcomfy_conn_id: the Airflow connection holding the API token.
    :param deferrable: wait in the triggerer instead of poking from a worker.
    :param poll_interval: seconds between status polls (also the sensor's ``poke_interval``).
    :param timeout: seconds to wait before failing (the sensor's usual ``timeout``).
    :param output_dir: where to keep copies of the outputs, as for the operators: a local path or
        an ``ObjectStoragePath`` URL; the return value gains ``stored`` (templated).
    :param max_output_bytes: the largest output file kept (None: 200 MB).
    """

    template_fields: Sequence[str] = ("request_id", "model_id", "output_dir")
    operator_extra_links = (RunComfyOutputLink(),)
    ui_color = "#e8e0ff"

    def __init__(
        self,
        *,
        request_id: str,
        model_id: str | None = None,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        timeout: float = 3600,
        output_dir: Any = None,
        max_output_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poll_interval, timeout=timeout, **kwargs)
        self.request_id = request_id
        self.model_id = model_id
        keep_wait_arguments(self, runcomfy_conn_id, deferrable, poll_interval, output_dir, max_output_bytes)

    def execute(self, context: Context) -> Any:
        """Defer to the trigger, or poke in the worker when not deferrable."""
        try:
            validate_request_id(self.request_id)
            self.check_output_dir()
        except RunComfyError as error:
            fail(error)
        if not self.deferrable:
            return super().execute(context)
        self.wait_for(context, self.request_id, self.model_id)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """One look at the request: not yet (also "finished, outcome not written yet"), or its outcome."""
        try:
            if finality(self.hook.get_status(self.request_id)) is Finality.WAITING:
                return False
            result = self.hook.get_result(self.request_id)
        except RunComfyError as error:
            fail(error)
        if not finality(result).is_outcome:
            return False
        outcome = Outcome.from_result(result, self.model_id)
        return PokeReturnValue(True, self.conclude(context, outcome))

    def cancel_request(self, request_id: str, *, why: str) -> None:
        """The sensor never cancels: the request belongs to the task that submitted it."""
        self.log.info(
            "Not cancelling RunComfy request %s (%s): this sensor does not own it.", request_id, why
        )
