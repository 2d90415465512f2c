"""Operators that run a RunComfy model: submit once, wait without a worker slot, hand over the outputs.

``RunComfyModelOperator`` runs any model; ``FluxKontextProEditOperator`` and
``NanoBananaEditOperator`` are typed front doors for the two seed models.
The waiting and the outcome handling (``RunComfyWaitMixin``) are shared with
``RunComfyRequestSensor``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_runcomfy.client import (
    AuthenticationError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidInputError,
    InvalidModelError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    PermissionDeniedError,
    RequestNotFoundError,
    RequestStatus,
    RunComfyError,
    SubmitOutcomeUnknownError,
)
from airflow_provider_runcomfy.client import errors as client_errors
from airflow_provider_runcomfy.client.download import DEFAULT_MAX_OUTPUT_BYTES, check_max_output_bytes
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT, validate_input
from airflow_provider_runcomfy.triggers.runcomfy import (
    RunComfyRequestTrigger,
    deadline_after,
    describe_cancel,
    describe_status,
    error_event,
    result_event,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Key of the ``task_state_store`` entry that lets a retry re-attach to its job.
STATE_KEY = "runcomfy_request"

#: The triggerer's own timeout is a backstop behind the trigger's deadline, not the deadline itself.
DEFER_TIMEOUT_MARGIN = timedelta(seconds=60)

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

#: The error each event status turns into, when it is not a success.
EVENT_ERRORS: dict[str, type[RunComfyError]] = {
    "failed": JobFailedError,
    "cancelled": JobCancelledError,
    "timeout": JobTimeoutError,
}


def fail(error: RunComfyError) -> None:
    """Raise ``error`` so the task fails; without retries when no retry could fix it."""
    if isinstance(error, PERMANENT_ERRORS):
        raise AirflowFailException(error.message) from error
    raise error


class RunComfyWaitMixin:
    """Waiting for a RunComfy request and turning its outcome into the task's result.

    Shared by the operators and the sensor so that there is one mapping of
    RunComfy states and one loop shape, deferred or blocking.
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
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES

    @cached_property
    def hook(self) -> RunComfyHook:
        """The hook of ``runcomfy_conn_id``, built once per task instance."""
        return RunComfyHook(runcomfy_conn_id=self.runcomfy_conn_id)

    def wait_for(self, context: Context, request_id: str, model_id: str | None) -> Any:
        """Wait for ``request_id``: defer to the triggerer, or poll here when not deferrable."""
        deadline = deadline_after(self.timeout)
        if self.deferrable:
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
            event = result_event(result, model_id)
        except RunComfyError as error:
            event = error_event(error, request_id, model_id)
        finally:
            self._in_flight = None
        return self.execute_complete(context, event)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the wait: return the outputs, or fail with what happened and what to do."""
        status = event.get("status")
        request_id = event.get("request_id", "")
        if status == "succeeded":
            self.log.info(
                "RunComfy request %s succeeded with %d output(s).", request_id, len(event["outputs"])
            )
            return self.finish(context, event)
        if status == "timeout":
            self.cancel_request(request_id, why=f"it did not finish within timeout={self.timeout} s")
            message = (
                f"RunComfy request {request_id} did not finish within timeout={self.timeout} s; "
                "raise `timeout` if the model needs longer."
            )
            fail(JobTimeoutError(message, request_id=request_id))
        error_class = EVENT_ERRORS.get(status or "") or _error_class(event.get("error_type"))
        message = str(event.get("message") or f"RunComfy request {request_id}: {status}")
        fail(error_class(message, request_id=request_id))

    def finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The task's return value for a succeeded request: small, JSON, URLs not files."""
        keys = ("request_id", "model_id", "status", "outputs", "output", "created_at", "finished_at")
        result = {key: event.get(key) for key in keys}
        if _keeps_copies(self.output_dir):
            result["stored"] = self.store_outputs(context, str(result["request_id"]), result["outputs"] or [])
        return result

    def store_outputs(self, context: Context, request_id: str, urls: list[str]) -> list[dict[str, Any]]:
        """Copy the outputs to ``output_dir`` before their URLs expire; ``stored`` entries of the result."""
        from airflow_provider_runcomfy.outputs.storage import OutputStore

        try:
            store = OutputStore.for_task(
                context, self.output_dir, max_output_bytes=self.max_output_bytes, logger=self.log
            )
            return [copy.as_dict() for copy in store.keep(request_id, urls)]
        except RunComfyError as error:
            if error.retryable:  # a broken transfer: the retry re-attaches and copies what is missing
                raise
            raise AirflowFailException(error.message) from error

    def check_output_dir(self) -> None:
        """Fail before submitting (and paying) when ``output_dir`` cannot be written by any filesystem."""
        if _keeps_copies(self.output_dir):
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
        """Cancel the job before failing when the triggerer's own defer timeout fired first."""
        if next_method == "__fail__":
            request_id = context["ti"].xcom_pull(task_ids=context["ti"].task_id, key="request_id")
            if request_id:
                self.cancel_request(request_id, why="the deferral timed out")
        return super().resume_execution(next_method, next_kwargs, context)  # type: ignore[misc]


class RunComfyModelOperator(RunComfyWaitMixin, BaseOperator):
    """Runs any RunComfy model: submits once, waits (in the triggerer by default), returns the outputs.

    XCom: ``request_id`` is pushed as soon as the job is submitted; the return value is
    ``{"request_id", "model_id", "status", "outputs", "output", "created_at", "finished_at"}``,
    where ``outputs`` lists the output URLs whatever the model names them.

    A retry of the same task instance re-attaches to the job its earlier try submitted
    (recorded in ``task_state_store``) instead of paying for a new one: a job still running
    is waited for, a succeeded one is reused; a failed, cancelled or expired job, or
    changed inputs, lead to a new submit. ``reattach=False`` always submits anew.

    :param model_id: the RunComfy model, e.g. ``google/nano-banana/edit`` (templated).
    :param input: the model's input, a dict whose keys are the model schema's (templated).
        Inputs of the seed models are validated when the DAG is parsed (if literal) and
        again after rendering, before any request is sent.
    :param runcomfy_conn_id: the Airflow connection holding the API token.
    :param deferrable: wait in the triggerer (no worker slot held) rather than in the worker.
    :param poll_interval: seconds between status polls.
    :param timeout: seconds to wait for the job before cancelling it and failing; None waits forever.
    :param reattach: re-attach a retry to the job of an earlier try (see above).
    :param output_dir: where to keep copies of the outputs, since RunComfy's URLs are temporary: a
        local path or any ``ObjectStoragePath`` URL (``file://``, ``s3://``, ``gs://``, ``memory://``)
        (templated). Each output is streamed to
        ``{output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}_{n}.{ext}`` and the
        return value gains ``stored``: ``[{"uri", "source_url", "bytes", "sha256", "content_type"}]``.
        A retry does not download a copy it already has. See ``docs/outputs.md``.
    :param max_output_bytes: the largest output file kept (default 200 MB); a larger one fails the task.
    """

    template_fields: Sequence[str] = ("model_id", "input", "output_dir")
    template_fields_renderers: ClassVar[dict[str, str]] = {"input": "json"}
    ui_color = "#e8e0ff"

    #: Fields whose rendered Jinja text (always a string) should become an integer.
    integer_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        model_id: str,
        input: Mapping[str, Any] | str | None = None,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        timeout: float | None = 3600,
        reattach: bool = True,
        output_dir: Any = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_id = model_id
        self.output_dir = output_dir
        self.max_output_bytes = check_max_output_bytes(max_output_bytes)
        # A Jinja string or an XCom reference stays as it is until rendered.
        self.input: Any = dict(input) if isinstance(input, Mapping) else ({} if input is None else input)
        self.runcomfy_conn_id = runcomfy_conn_id
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.timeout = timeout
        self.reattach = reattach
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}.")
        if _is_literal(self.model_id) and _is_literal(self.input):
            payload = self.build_input()
            if _is_literal(payload):
                # A literal mistake becomes a DAG import error, not a failed (or paid) run.
                validate_input(self.model_id, payload)

    def build_input(self) -> dict[str, Any]:
        """The model input from this operator's fields (rendered, when called in ``execute``)."""
        if not isinstance(self.input, Mapping):
            raise InvalidInputError(
                f"The input of {self.model_id} must be a dict of the model's fields, "
                f"not {type(self.input).__name__}: {str(self.input)[:80]!r}."
            )
        payload = dict(self.input)
        for name in self.integer_fields:
            value = payload.get(name)
            if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
                payload[name] = int(value)
        return payload

    def execute(self, context: Context) -> Any:
        """Validate, submit (or re-attach), then wait for the job."""
        try:
            payload = validate_input(self.model_id, self.build_input())
            self.check_output_dir()
            request_id = self._reattach(context, payload) or self._submit(context, payload)
        except RunComfyError as error:
            fail(error)
        if isinstance(request_id, dict):  # an earlier try's job had already succeeded
            return self.execute_complete(context, request_id)
        return self.wait_for(context, request_id, self.model_id)

    def on_kill(self) -> None:
        """Cancel the job a blocking wait is polling; a deferred task is cancelled by its trigger."""
        self.kill_in_flight()

    def _submit(self, context: Context, payload: dict[str, Any]) -> str:
        response = self.hook.submit(self.model_id, payload)
        request_id = response.request_id
        self.log.info("Submitted RunComfy request %s to %s.", request_id, self.model_id)
        store = context.get("task_state_store")
        if store is not None:
            # Recorded before anything else, so a crash from here on re-attaches instead of paying again.
            store.set(
                STATE_KEY, {"request_id": request_id, "fingerprint": _fingerprint(self.model_id, payload)}
            )
        context["ti"].xcom_push(key="request_id", value=request_id)
        return request_id

    def _reattach(self, context: Context, payload: dict[str, Any]) -> str | dict[str, Any] | None:
        """The earlier try's request to wait for, its success event to reuse, or None to submit."""
        store = context.get("task_state_store")
        record = store.get(STATE_KEY) if store is not None and self.reattach else None
        if not isinstance(record, dict) or "request_id" not in record:
            return None
        request_id = str(record["request_id"])
        if record.get("fingerprint") != _fingerprint(self.model_id, payload):
            self.log.info("Inputs changed since RunComfy request %s; submitting a new job.", request_id)
            return None
        try:
            status = self.hook.get_status(request_id)
            if status.status.is_waiting:
                self.log.info(
                    "Re-attaching to RunComfy request %s of an earlier try (%s); nothing is submitted.",
                    request_id,
                    status.status.value,
                )
                context["ti"].xcom_push(key="request_id", value=request_id)
                return request_id
            result = self.hook.get_result(request_id)
        except RequestNotFoundError:
            self.log.info("RunComfy request %s of an earlier try has expired; submitting anew.", request_id)
            return None
        event = result_event(result, self.model_id)
        if event["status"] != "succeeded":
            self.log.info(
                "RunComfy request %s of an earlier try %s; submitting anew.", request_id, event["status"]
            )
            return None
        self.log.info(
            "Reusing the outputs of RunComfy request %s of an earlier try; nothing is submitted.", request_id
        )
        context["ti"].xcom_push(key="request_id", value=request_id)
        return event


class FluxKontextProEditOperator(RunComfyModelOperator):
    """Edits one image with ``blackforestlabs/flux-1-kontext/pro/edit``.

    :param prompt: the edit to make (templated).
    :param image_url: the image, a public https URL (or a ``data:`` URI) (templated).
    :param seed: an integer for reproducible results (templated).
    :param aspect_ratio: one of 21:9, 16:9, 4:3, 3:2, 1:1, 2:3, 3:4, 9:16, 9:21 (templated).
    Other arguments: see ``RunComfyModelOperator``.
    """

    template_fields: Sequence[str] = ("prompt", "image_url", "seed", "aspect_ratio", "output_dir")
    integer_fields = ("seed",)

    def __init__(
        self,
        *,
        prompt: str,
        image_url: str,
        seed: int | str | None = None,
        aspect_ratio: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.prompt = prompt
        self.image_url = image_url
        self.seed = seed
        self.aspect_ratio = aspect_ratio
        super().__init__(model_id=FLUX_KONTEXT_PRO_EDIT, **kwargs)

    def build_input(self) -> dict[str, Any]:
        """The input from the (rendered) fields; unset ones are left to RunComfy's defaults."""
        self.input = _without_none(
            prompt=self.prompt, image_url=self.image_url, seed=self.seed, aspect_ratio=self.aspect_ratio
        )
        return super().build_input()


class NanoBananaEditOperator(RunComfyModelOperator):
    """Edits or combines 1 to 10 images with ``google/nano-banana/edit``.

    :param prompt: the edit to make, at most 1000 characters (templated).
    :param image_urls: 1 to 10 public https URLs (or ``data:`` URIs); one URL alone is accepted
        too, which suits ``.expand(image_urls=[...])`` over single images (templated).
    :param aspect_ratio: auto, 21:9, 16:9, 3:2, 4:3, 5:4, 1:1, 4:5, 3:4, 2:3 or 9:16 (templated).
    :param output_format: jpeg, png or webp (templated).
    :param num_images: 1 to 4 (templated).
    Other arguments: see ``RunComfyModelOperator``.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "image_urls",
        "aspect_ratio",
        "output_format",
        "num_images",
        "output_dir",
    )
    integer_fields = ("num_images",)

    def __init__(
        self,
        *,
        prompt: str,
        image_urls: Sequence[str] | str,
        aspect_ratio: str | None = None,
        output_format: str | None = None,
        num_images: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.prompt = prompt
        self.image_urls = image_urls
        self.aspect_ratio = aspect_ratio
        self.output_format = output_format
        self.num_images = num_images
        super().__init__(model_id=NANO_BANANA_EDIT, **kwargs)

    def build_input(self) -> dict[str, Any]:
        """The input from the (rendered) fields; unset ones are left to RunComfy's defaults."""
        urls = self.image_urls
        self.input = _without_none(
            prompt=self.prompt,
            image_urls=[urls] if isinstance(urls, str) else urls,
            aspect_ratio=self.aspect_ratio,
            output_format=self.output_format,
            num_images=self.num_images,
        )
        return super().build_input()


def _error_class(name: object) -> type[RunComfyError]:
    """The client error class an ``error`` event names, so the task fails with the same type."""
    found = getattr(client_errors, str(name), None)
    return found if isinstance(found, type) and issubclass(found, RunComfyError) else RunComfyError


def _keeps_copies(output_dir: Any) -> bool:
    """Whether ``output_dir`` asks for copies; a template that rendered None reads "None": no copies."""
    return bool(output_dir) and str(output_dir).strip() not in ("", "None")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _fingerprint(model_id: str, payload: Mapping[str, Any]) -> str:
    """Identifies a job's model and inputs, so a retry with other inputs does not reuse the old job."""
    blob = json.dumps({"model_id": model_id, "input": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_literal(value: Any) -> bool:
    """Whether ``value`` is known at parse time: no Jinja template and no XCom reference inside."""
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, Mapping):
        return all(_is_literal(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, (int, float, bool))
