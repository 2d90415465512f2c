"""Model info read once per task, and the checks made with it before a paid submit.

RunComfy publishes each model's input schema and price at ``GET /v1/models/{id}``
(its own clients read it; its docs do not mention it, so everything here works
without it). A task reads it at most once: a single-job task checks one input, and a
batch keeps its one ``read_model`` answer (success or failure) for all its items, so a
batch of 10,000 items asks once and an outage is not asked 10,000 times. There is no
cache across tasks: each task runs in a fresh process, where such a cache never had a
second hit.

Before a submit, :func:`check_before_submit` (the single-job operators) or a
:class:`BatchGuard` (the batch operator, item by item):

* check the input of a model with no typed input class against its published
  schema (``models.schema``); when the schema cannot be had, the submit goes on
  unchecked with a warning -- RunComfy checks it anyway -- or, with
  ``on_schema_unavailable="fail"``, nothing is submitted;
* refuse a submit whose estimated price is over ``max_cost_usd`` (``models.spend``).

Nothing here knows Airflow or HTTP: the info is read through a ``fetch``
callable (the hook's ``get_model``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.arguments import (
    check_on_schema_unavailable,
)
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.models.base import invalid_input
from airflow_provider_runcomfy.models.spend import (
    Budget,
    CostEstimate,
    estimate_cost,
    refuse_over_budget,
    usd,
)

if TYPE_CHECKING:
    import logging

    from jsonschema.protocols import Validator

    from airflow_provider_runcomfy.client.models import ModelInfo


class SchemaUnavailableError(RunComfyError):
    """The model's input schema could not be read or used, and ``on_schema_unavailable="fail"``.

    Nothing was submitted. Not permanent: a retry of the task may find the schema.
    """

    retryable = True


class _CompiledSchema:
    """A model's input schema compiled once, shared by every lookup of the same cache entry."""

    def __init__(self, info: ModelInfo | None, problem: str | None) -> None:
        self.info = info
        self.problem = problem

    @cached_property
    def validator(self) -> Validator | str:
        from airflow_provider_runcomfy.models.schema import UnusableSchemaError, compile_schema

        if self.info is None:
            return f"its model info could not be read ({self.problem})"
        if self.info.input_schema is None:
            return "RunComfy publishes no input schema for it"
        try:
            return compile_schema(self.info.input_schema)
        except UnusableSchemaError as exc:
            return f"its published input schema is unusable: {exc}"

    @cached_property
    def skipped_patterns(self) -> list[str]:
        """The published patterns RE2 cannot run (``field: ...`` lines): those checks are skipped."""
        from airflow_provider_runcomfy.models.schema import unevaluable_patterns

        if self.info is None or self.info.input_schema is None or isinstance(self.validator, str):
            return []
        return unevaluable_patterns(self.info.input_schema)


@dataclass(frozen=True)
class ModelLookup:
    """What is known of one model: its info, or why there is none (``problem``)."""

    model_id: str
    info: ModelInfo | None
    problem: str | None = None
    _schema: _CompiledSchema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_schema", _CompiledSchema(self.info, self.problem))

    @property
    def validator(self) -> Validator | str:
        """The compiled input schema, or why the input cannot be checked (a sentence fragment)."""
        return self._schema.validator

    @property
    def skipped_patterns(self) -> list[str]:
        """Published patterns that cannot be evaluated in linear time, so are not checked."""
        return self._schema.skipped_patterns


def read_model(model_id: str, fetch: Callable[[str], ModelInfo]) -> ModelLookup:
    """The info of ``model_id`` read with ``fetch`` (the hook's ``get_model``).

    A ``RunComfyError`` from ``fetch`` is not raised: the lookup says why there is no info, and
    the caller decides (warn and submit unchecked, or refuse) once, not per item.
    """
    try:
        return ModelLookup(model_id, fetch(model_id))
    except RunComfyError as error:
        return ModelLookup(model_id, None, error.message.rstrip("."))


class InputChecker:
    """Checks inputs of one model against its published schema; one per task (or per batch).

    :param lookup: the model's info (``read_model``).
    :param on_unavailable: ``"warn"``: when the schema cannot be had, log once and let inputs
        through unchecked (RunComfy still checks them, after the submit); ``"fail"``: raise
        ``SchemaUnavailableError`` so nothing is submitted.
    :param log: where the warnings go.
    """

    def __init__(
        self, lookup: ModelLookup, *, on_unavailable: str = "warn", log: logging.Logger | Any = None
    ) -> None:
        self.lookup = lookup
        self.model_id = lookup.model_id
        self.on_unavailable = check_on_schema_unavailable(on_unavailable)
        self.log = log
        self._warned: set[str] = set()

    @property
    def available(self) -> bool:
        """Whether inputs are checked (the schema was read and can be applied)."""
        return not isinstance(self.lookup.validator, str)

    def check(self, payload: Mapping[str, Any]) -> None:
        """Raise ``InvalidInputError`` naming each bad field; see the class for an unavailable schema."""
        from airflow_provider_runcomfy.models.schema import UnusableSchemaError, input_problems

        validator = self.lookup.validator
        try:
            problems = None if isinstance(validator, str) else input_problems(validator, payload)
        except UnusableSchemaError as exc:
            validator = f"its published input schema is unusable: {exc}"
            problems = None
        if isinstance(validator, str):
            self._unavailable(validator)
            return
        if problems:
            raise invalid_input(self.model_id, problems)
        self._skipped_patterns()
        self._warn_undeclared(payload)

    def _skipped_patterns(self) -> None:
        """A pattern that cannot run safely is a part of the schema that is unavailable: same choice."""
        skipped = self.lookup.skipped_patterns
        if skipped:
            self._unavailable("; ".join(skipped), what="fully checked")

    def _unavailable(self, why: str, what: str = "checked") -> None:
        if self.on_unavailable == "fail":
            raise SchemaUnavailableError(
                f"Not submitted: the input of {self.model_id} cannot be {what}, because {why}, and "
                "on_schema_unavailable='fail'. Retry later, or set on_schema_unavailable='warn' to "
                "submit unchecked (RunComfy then checks the input itself)."
            )
        self._warn(
            f"The input of {self.model_id} is submitted {'unchecked' if what == 'checked' else 'partly checked'}, "
            f"because {why}; RunComfy checks it "
            "itself (a mistake fails the job). Set on_schema_unavailable='fail' to refuse instead."
        )

    def _warn_undeclared(self, payload: Mapping[str, Any]) -> None:
        from airflow_provider_runcomfy.models.schema import undeclared_inputs

        schema = self.lookup.info.input_schema if self.lookup.info else None
        extra = undeclared_inputs(schema or {}, payload)
        if extra:
            self._warn(
                f"Input(s) {', '.join(extra)} are not in the published schema of {self.model_id}; RunComfy "
                "may ignore them. Check their spelling."
            )

    def _warn(self, message: str) -> None:
        if message not in self._warned and self.log is not None:
            self._warned.add(message)
            self.log.warning(message)


def check_before_submit(
    model_id: str,
    payload: Mapping[str, Any],
    lookup: Callable[[], ModelLookup],
    *,
    check_schema: bool,
    on_schema_unavailable: str = "warn",
    max_cost_usd: float | None = None,
    log: logging.Logger | Any = None,
) -> CostEstimate | None:
    """The checks of one paid submit; reads the model's info only when one of them needs it.

    :param lookup: returns the model's info (e.g. ``read_model`` bound to the hook).
    :param check_schema: check ``payload`` against the published schema (models without a typed
        input class).
    :param on_schema_unavailable: ``"warn"`` or ``"fail"`` (see :class:`InputChecker`).
    :param max_cost_usd: refuse when the estimated price of ``payload`` is over this.
    :return: the estimated price (None when unknown, or when nothing needed the info).
    :raises InvalidInputError: the input breaks the schema; ``BudgetExceededError``: over budget;
        ``SchemaUnavailableError``: no schema and ``on_schema_unavailable="fail"``.
    """
    if not check_schema and max_cost_usd is None:
        return None
    found = lookup()
    if check_schema:
        InputChecker(found, on_unavailable=on_schema_unavailable, log=log).check(payload)
    estimate = estimate_cost(found.info, payload)
    if max_cost_usd is not None:
        refuse_over_budget(model_id, estimate, max_cost_usd)
        if log is not None:
            log.info(
                "Estimated price of this job of %s: %s (max_cost_usd=%s).",
                model_id,
                estimate.describe() if estimate else "not known (RunComfy gives no price for this input)",
                usd(max_cost_usd),
            )
    return estimate


class BatchGuard:
    """The checks of a batch: any model's inputs against its schema, and the budget, per item.

    The model's info is read lazily (once per guard, i.e. per task) and only when a check
    needs it: a seed model without ``max_cost_usd`` reads nothing.

    :param model_id: the batch's model.
    :param connection: the connection (its conn id) the info is read through.
    :param fetch: reads the model's info (the hook's ``get_model``).
    :param max_cost_usd: the batch's budget (see ``spend.Budget``); None: no budget.
    :param on_schema_unavailable: ``"warn"`` or ``"fail"`` (see :class:`InputChecker`).
    :param log: the task's logger.
    """

    def __init__(
        self,
        model_id: str,
        connection: Hashable,
        fetch: Callable[[str], ModelInfo],
        *,
        max_cost_usd: float | None = None,
        on_schema_unavailable: str = "warn",
        log: logging.Logger | Any = None,
    ) -> None:
        self.model_id = model_id
        self._connection, self._fetch = connection, fetch
        self.max_cost_usd = max_cost_usd
        self.on_schema_unavailable = check_on_schema_unavailable(on_schema_unavailable)
        self.log = log

    @cached_property
    def lookup(self) -> ModelLookup:
        """The model's info, read on first use."""
        return read_model(self.model_id, self._fetch)

    @cached_property
    def checker(self) -> InputChecker | None:
        """The schema check, for a model without a typed input class; None for a seed model."""
        from airflow_provider_runcomfy.models.registry import INPUT_MODELS

        if self.model_id in INPUT_MODELS:
            return None
        return InputChecker(self.lookup, on_unavailable=self.on_schema_unavailable, log=self.log)

    @cached_property
    def budget(self) -> Budget:
        """The batch's budget, priced with the model's info (read only when there is a budget)."""
        return Budget(
            self.max_cost_usd, self.model_id, self.lookup.info if self.max_cost_usd is not None else None
        )

    def read_price(self) -> BatchGuard:
        """Read the model's price now when there is a budget, so that the submit loop never waits on it."""
        if self.max_cost_usd is not None:
            self.budget.estimate({})
        return self

    def validate(self, model_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``validate_input`` (typed seed inputs, JSON objects), then the published schema of any other model."""
        from airflow_provider_runcomfy.models.registry import validate_input

        body = validate_input(model_id, payload)
        if self.checker is not None:
            self.checker.check(body)
        return body

    def start(self, payloads: Iterable[Mapping[str, Any]], *, spent_usd: float = 0.0) -> None:
        """Before the first submit of a try: refuse a batch whose estimate is over its budget.

        :raises BudgetExceededError: nothing may be submitted.
        """
        if self.max_cost_usd is None:
            return
        total, priced = self.budget.check_batch(payloads, spent_usd=spent_usd)
        if self.log is not None:
            self.log.info(
                "Estimated price of the items to submit: %s for %d priced item(s)%s; max_cost_usd=%s.",
                usd(total),
                priced,
                f", {usd(spent_usd)} already spent" if spent_usd else "",
                usd(self.max_cost_usd),
            )

    def may_submit(self, payload: Any, *, spent_usd: float, in_flight: int) -> bool:
        """Whether the next item fits in the budget (logged once when it does not)."""
        if self.max_cost_usd is None:
            return True
        was_stopped = self.budget.stopped
        body = payload if isinstance(payload, Mapping) else {}
        if self.budget.allows(body, spent_usd=spent_usd, in_flight=in_flight):
            return True
        if not was_stopped and self.log is not None:
            self.log.warning("Budget: %s.", self.budget.stopped_reason)
        return False
