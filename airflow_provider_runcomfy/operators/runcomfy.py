"""Operators that run a RunComfy model: submit once, wait without a worker slot, hand over the outputs.

``RunComfyModelOperator`` runs any model; ``FluxKontextProEditOperator`` and
``NanoBananaEditOperator`` are typed front doors for the two seed models.
The waiting and the outcome handling (``RunComfyWaitMixin``) are shared with
``RunComfyRequestSensor``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_runcomfy.arguments import (
    PreflightMode,
    check_max_cost,
    check_on_schema_unavailable,
    check_preflight,
    check_sign_expiry,
    keep_wait_arguments,
)
from airflow_provider_runcomfy.client import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT, validate_input
from airflow_provider_runcomfy.operators._submit import (
    ON_UNKNOWN_SUBMIT,
    STATE_KEY,
    EarlierJob,
    OnUnknownSubmit,
    SubmitOnceMixin,
)
from airflow_provider_runcomfy.operators._wait import (
    PERMANENT_ERRORS,
    RunComfyWaitMixin,
    fail,
)
from airflow_provider_runcomfy.operators.lineage import RunComfyLineageMixin
from airflow_provider_runcomfy.operators.links import RunComfyOutputLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.sources import Prepared

__all__ = [
    "PERMANENT_ERRORS",
    "STATE_KEY",
    "EarlierJob",
    "FluxKontextProEditOperator",
    "NanoBananaEditOperator",
    "RunComfyModelOperator",
    "RunComfyWaitMixin",
    "fail",
]


class RunComfyModelOperator(RunComfyLineageMixin, SubmitOnceMixin, RunComfyWaitMixin, BaseOperator):
    """Runs any RunComfy model: submits once, waits (in the triggerer by default), returns the outputs.

    XCom: ``request_id`` is pushed as soon as the job is submitted; the return value is
    ``{"request_id", "model_id", "status", "outputs", "output", "created_at", "finished_at",
    "cost_usd"}``, where ``outputs`` lists the output URLs whatever the model names them and
    ``cost_usd`` is what RunComfy charged (None when it did not say).

    A retry of the same task instance re-attaches to the job its earlier try submitted
    (recorded in ``task_state_store``) instead of paying for a new one: a job still running
    (or finished, its outcome not yet written) is waited for, a succeeded one is reused; only a
    failed, cancelled or expired job, or changed inputs, lead to a new submit. An earlier submit
    whose answer was lost stops the task (see ``on_unknown_submit``). ``reattach=False`` always
    submits anew. See ``docs/retries-and-billing.md``.

    :param model_id: the RunComfy model, e.g. ``google/nano-banana/edit`` (templated).
    :param input: the model's input, a dict whose keys are the model schema's (templated).
        Inputs of the seed models are validated when the DAG is parsed (if literal) and
        again after rendering, before any request is sent.
    :param runcomfy_conn_id: the Airflow connection holding the API token.
    :param deferrable: wait in the triggerer (no worker slot held) rather than in the worker.
    :param poll_interval: seconds between status polls.
    :param timeout: seconds to wait for the job before cancelling it and failing; None waits forever.
    :param reattach: re-attach a retry to the job of an earlier try (see above).
    :param on_unknown_submit: what a retry does when an earlier try sent a submit and never learned
        its request id (a job may exist and be billed): ``"fail"`` (the default) stops and says how
        to look for the job; ``"resubmit"`` submits again, accepting a possible second charge.
    :param output_dir: where to keep copies of the outputs, since RunComfy's URLs are temporary: a
        local path or any ``ObjectStoragePath`` URL (``file://``, ``s3://``, ``gs://``, ``memory://``)
        (templated). Each output is streamed to
        ``{output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}_{n}.{ext}`` and the
        return value gains ``stored``: ``[{"uri", "source_url", "bytes", "sha256", "content_type"}]``.
        A retry does not download a copy it already has. See ``docs/outputs.md``.
    :param max_output_bytes: the largest output file kept (None: 200 MB); a larger one fails the task.
    :param max_cost_usd: refuse to submit (nothing is paid; the task fails without retrying) when the
        model's published price for this input is known to exceed this many USD. See ``docs/spend.md``.
    :param on_schema_unavailable: the input of a model without typed inputs is checked against the
        model's published JSON Schema before the submit; when that schema cannot be had, ``"warn"``
        (the default) submits unchecked with a warning and ``"fail"`` submits nothing.
    :param preflight: ``"warn"`` (default), ``"strict"`` or ``"off"``: before the submit, check each
        https input with a HEAD (a 404, a web page or a file over 50 MB fails the task before paying;
        a host the worker cannot reach is a warning, an error with ``"strict"``). See ``docs/inputs.md``.
    :param sign_expiry: how long the pre-signed URLs of inputs given as ``s3://``/``gs://`` paths
        stay valid (seconds or a ``timedelta``); None: ``timeout`` plus 15 minutes (a day without one).
    """

    #: ``model_id`` is a rendered field of every RunComfy operator, typed ones too: the outputs
    #: view reads a task's model from what Airflow stored, whatever the operator's class.
    template_fields: Sequence[str] = ("model_id", "input", "output_dir")
    template_fields_renderers: ClassVar[dict[str, str]] = {"input": "json"}
    ui_color = "#e8e0ff"
    #: "RunComfy output" on the task instance's Details tab: its outputs tab (``plugins``).
    operator_extra_links = (RunComfyOutputLink(),)

    #: Fields whose rendered Jinja text (always a string) should become an integer.
    integer_fields: ClassVar[tuple[str, ...]] = ()
    #: A typed operator's own fields that make the model input (named as the model's inputs);
    #: empty: the input is ``input``.
    input_fields: ClassVar[tuple[str, ...]] = ()

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
        on_unknown_submit: OnUnknownSubmit = "fail",
        max_cost_usd: float | None = None,
        on_schema_unavailable: str = "warn",
        output_dir: Any = None,
        max_output_bytes: int | None = None,
        preflight: PreflightMode = "warn",
        sign_expiry: int | timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_id = model_id
        self.preflight = check_preflight(preflight)
        self.sign_expiry = check_sign_expiry(sign_expiry)
        keep_wait_arguments(self, runcomfy_conn_id, deferrable, poll_interval, output_dir, max_output_bytes)
        # A Jinja string or an XCom reference stays as it is until rendered.
        self.input: Any = dict(input) if isinstance(input, Mapping) else ({} if input is None else input)
        self.timeout = timeout
        self.reattach = reattach
        self.on_unknown_submit = on_unknown_submit
        self.max_cost_usd = check_max_cost(max_cost_usd)
        self.on_schema_unavailable = check_on_schema_unavailable(on_schema_unavailable)
        if on_unknown_submit not in ON_UNKNOWN_SUBMIT:
            raise ValueError(f"on_unknown_submit must be 'fail' or 'resubmit', not {on_unknown_submit!r}.")
        if _is_literal(self.model_id) and _is_literal(self.input):
            payload = self.build_input()
            if _is_literal(payload):
                # A literal mistake becomes a DAG import error, not a failed (or paid) run.
                validate_input(self.model_id, payload)

    def build_input(self) -> dict[str, Any]:
        """The model input from this operator's fields (rendered, when called in ``execute``).

        A typed operator's ``input_fields`` that are set make the input; unset ones are left
        to RunComfy's defaults.
        """
        if self.input_fields:
            fields = {name: getattr(self, name) for name in self.input_fields}
            self.input = {name: value for name, value in fields.items() if value is not None}
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
        """Validate, re-attach to an earlier try's job or submit once, then wait for the job."""
        try:
            payload = validate_input(self.model_id, self.build_input())
            self.check_output_dir()
            earlier = self.find_earlier_job(context, payload)
            if earlier.outcome is None:
                if earlier.request_id is None:
                    # On the user's input, before files are signed: no signed URL in a message.
                    self.check_before_paying(payload)
                request_id = earlier.request_id or self.submit_once(
                    context, payload, self.prepare_inputs(payload).payload_to_send
                )
        except RunComfyError as error:
            fail(error)
        if earlier.outcome is not None:  # an earlier try's job had already succeeded
            return self.conclude(context, earlier.outcome)
        return self.wait_for(context, request_id, self.model_id)

    def prepare_inputs(self, payload: dict[str, Any]) -> Prepared:
        """Sign or inline files in storage and pre-flight https inputs, just before the submit.

        Only when a submit is due: a retry that re-attaches checks and signs nothing.
        See ``docs/inputs.md``.
        """
        from airflow_provider_runcomfy.sources import prepare_input, sign_expiry_for

        return prepare_input(
            self.model_id,
            payload,
            preflight=self.preflight,
            sign_expiry=self.sign_expiry or sign_expiry_for(self.timeout),
            api_base_url=self.hook.client.base_url,
            logger=self.log,
        )

    def check_before_paying(self, payload: dict[str, Any]) -> None:
        """A model without typed inputs: its published schema; any model: the price against ``max_cost_usd``."""
        from airflow_provider_runcomfy.models import INPUT_MODELS
        from airflow_provider_runcomfy.models.catalog import check_before_submit, read_model

        check_before_submit(
            self.model_id,
            payload,
            lambda: read_model(self.model_id, self.hook.get_model),
            check_schema=self.model_id not in INPUT_MODELS,
            on_schema_unavailable=self.on_schema_unavailable,
            max_cost_usd=self.max_cost_usd,
            log=self.log,
        )

    def on_kill(self) -> None:
        """Cancel the job a blocking wait is polling; a deferred task is cancelled by its trigger."""
        self.kill_in_flight()


class FluxKontextProEditOperator(RunComfyModelOperator):
    """Edits one image with ``blackforestlabs/flux-1-kontext/pro/edit``.

    :param prompt: the edit to make (templated).
    :param image_url: the image: an https URL, a ``data:`` URI, or a file in your storage (an
        ``s3://``/``gs://`` path, a local path, an ``ObjectStoragePath``), signed or inlined when the
        task runs (templated). See ``docs/inputs.md``.
    :param seed: an integer for reproducible results (templated).
    :param aspect_ratio: one of 21:9, 16:9, 4:3, 3:2, 1:1, 2:3, 3:4, 9:16, 9:21 (templated).
    Other arguments: see ``RunComfyModelOperator``.
    """

    input_fields = ("prompt", "image_url", "seed", "aspect_ratio")
    template_fields: Sequence[str] = (*input_fields, "model_id", "output_dir")
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


class NanoBananaEditOperator(RunComfyModelOperator):
    """Edits or combines 1 to 10 images with ``google/nano-banana/edit``.

    :param prompt: the edit to make, at most 1000 characters (templated).
    :param image_urls: 1 to 10 images, each as for ``image_url`` of the flux operator (https
        URL, ``data:`` URI or a file in your storage); one alone is accepted too, which suits
        ``.expand(image_urls=[...])`` over single images (templated).
    :param aspect_ratio: auto, 21:9, 16:9, 3:2, 4:3, 5:4, 1:1, 4:5, 3:4, 2:3 or 9:16 (templated).
    :param output_format: jpeg, png or webp (templated).
    :param num_images: 1 to 4 (templated).
    Other arguments: see ``RunComfyModelOperator``.
    """

    input_fields = ("prompt", "image_urls", "aspect_ratio", "output_format", "num_images")
    template_fields: Sequence[str] = (*input_fields, "model_id", "output_dir")
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
        """The input from the (rendered) fields; one image alone (a string) is a list of one."""
        payload = super().build_input()
        if isinstance(payload.get("image_urls"), str):
            payload["image_urls"] = [payload["image_urls"]]
        return payload


def _is_literal(value: Any) -> bool:
    """Whether ``value`` is known at parse time: no Jinja template and no XCom reference inside."""
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, Mapping):
        return all(_is_literal(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, (int, float, bool))


def __getattr__(name: str) -> Any:
    """``RunComfyBatchOperator`` is importable from here too (the public contract), loaded on use.

    Lazy, so that a DAG file with single-job operators does not pay for the batch machinery.
    """
    if name == "RunComfyBatchOperator":
        from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator

        return RunComfyBatchOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
