"""What an input will cost, and a budget that stops spending before it is exceeded.

RunComfy publishes a price per model: ``base_price_usd`` per ``price_unit``
(``image``, ``second`` of video, or ``request``; see ``ModelInfo``). The
estimate of one input is that price times the units the input asks for:

* ``request``: 1;
* ``image``: the input's ``num_images`` (or ``num_outputs``, ``n``), else the
  schema's default for it, else 1;
* ``second``: the input's ``duration`` (or ``duration_seconds``, ``seconds``;
  ``"5"`` and ``"5s"`` read as 5), else the schema's default; unknown otherwise.

An estimate is ``None`` -- "not known" -- when RunComfy gives no price or the
units cannot be read. A budget refuses only what is *known* to exceed it, and
says in the log when it could not know.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.arguments import check_max_cost
from airflow_provider_runcomfy.client.errors import InvalidInputError

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client.models import ModelInfo

#: Inputs that say how many images one job makes, in the order they are looked for.
IMAGE_COUNT_INPUTS = ("num_images", "num_outputs", "n")
#: Inputs that say how many seconds of video one job makes, in the order they are looked for.
DURATION_INPUTS = ("duration", "duration_seconds", "seconds")

#: Sums of floats: 0.04 * 3 must not count as over a budget of 0.12.
_TOLERANCE = 1e-9
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*s?\s*", re.IGNORECASE)


class BudgetExceededError(InvalidInputError):
    """Nothing was submitted: the estimated cost is over ``max_cost_usd``. No retry can change that."""


@dataclass(frozen=True)
class CostEstimate:
    """The estimated price of one input: ``units`` x ``unit_price_usd`` = ``usd``."""

    usd: float
    units: float
    unit: str
    unit_price_usd: float

    def describe(self) -> str:
        """``$0.0800 (2 images x $0.0400 per image)``."""
        count = f"{self.units:g} {self.unit}{'' if self.units == 1 else 's'}"
        return f"{usd(self.usd)} ({count} x {usd(self.unit_price_usd)} per {self.unit})"


def usd(amount: float) -> str:
    """An amount of dollars as logs and messages show it: ``$0.0400``."""
    return f"${amount:,.4f}"


def estimate_cost(info: ModelInfo | None, payload: Mapping[str, Any]) -> CostEstimate | None:
    """The estimated price of one job of ``payload``, or ``None`` when it cannot be known."""
    if info is None or info.base_price_usd is None or info.price_unit is None:
        return None
    schema = info.input_schema or {}
    if info.price_unit == "request":
        units: float | None = 1.0
    elif info.price_unit == "image":
        units = _units(payload, schema, IMAGE_COUNT_INPUTS, default=1.0)
    elif info.price_unit == "second":
        units = _units(payload, schema, DURATION_INPUTS, default=None)
    else:
        return None
    if units is None:
        return None
    return CostEstimate(units * info.base_price_usd, units, info.price_unit, info.base_price_usd)


def _units(
    payload: Mapping[str, Any], schema: Mapping[str, Any], names: tuple[str, ...], *, default: float | None
) -> float | None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    for name in names:
        if name in payload:
            return _number(payload[name])
    for name in names:
        declared = properties.get(name)
        if isinstance(declared, Mapping) and "default" in declared:
            return _number(declared["default"])
    return default


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and (match := _NUMBER.fullmatch(value)):
        number = float(match.group(1))
    else:
        return None
    return number if 0 <= number < math.inf else None


def refuse_over_budget(model_id: str, estimate: CostEstimate | None, max_cost_usd: float) -> None:
    """Raise ``BudgetExceededError`` when one job of ``model_id`` is known to cost more than ``max_cost_usd``."""
    if estimate is not None and estimate.usd > max_cost_usd + _TOLERANCE:
        raise BudgetExceededError(
            f"Not submitted: a job of {model_id} with this input costs an estimated {estimate.describe()}, "
            f"over max_cost_usd={usd(max_cost_usd)}. Nothing was paid. Raise max_cost_usd, or change the "
            "input (fewer images, a shorter duration)."
        )


class Budget:
    """A batch's ``max_cost_usd``: checked before it starts, then before each submit.

    The batch keeps its own ledger of what was spent; the budget is asked, before each
    submit, with the recorded spend (RunComfy's ``cost`` of the finished jobs, earlier
    tries included) and the number of jobs in flight. A job is submitted only when
    recorded spend + the estimates of the jobs in flight + its own estimate stay within
    ``max_cost_usd``; from the first refusal on nothing more is submitted (``stopped``),
    and the jobs in flight finish and are kept. So with correct prices a batch never
    spends more than its budget. A job whose price is not known counts as 0 until
    RunComfy reports its ``cost``, which may overshoot the budget by the jobs in flight.

    :param max_cost_usd: the budget in USD; ``None`` allows everything.
    :param model_id: the batch's model, for messages.
    :param info: the model's info (its price), or ``None`` when it could not be read.
    """

    def __init__(self, max_cost_usd: float | None, model_id: str, info: ModelInfo | None) -> None:
        self.max_cost_usd = check_max_cost(max_cost_usd)
        self.model_id = model_id
        self.info = info
        #: The mean estimate of the batch's priced items: what each job in flight is counted as.
        self.job_estimate_usd: float | None = None
        #: Set at the first refusal: the reason, for the log and the manifest.
        self.stopped_reason: str | None = None

    @property
    def stopped(self) -> bool:
        """Whether the budget has refused a submit; no further submit is allowed."""
        return self.stopped_reason is not None

    def estimate(self, payload: Mapping[str, Any]) -> CostEstimate | None:
        """The estimated price of one job of ``payload``."""
        return estimate_cost(self.info, payload)

    def check_batch(
        self, payloads: Iterable[Mapping[str, Any]], *, spent_usd: float = 0.0
    ) -> tuple[float, int]:
        """Estimate the whole batch before anything is submitted: ``(known total USD, items priced)``.

        :param spent_usd: what earlier tries of the batch already spent (those items are not in
            ``payloads`` any more).
        :raises BudgetExceededError: when the items whose price is known, plus ``spent_usd``, cost
            more than ``max_cost_usd``: a batch that cannot finish within its budget never starts.
        """
        total, priced, count = 0.0, 0, 0
        for payload in payloads:
            count += 1
            estimate = self.estimate(payload)
            if estimate is not None:
                total += estimate.usd
                priced += 1
        self.job_estimate_usd = total / priced if priced else None
        if self.max_cost_usd is not None and spent_usd + total > self.max_cost_usd + _TOLERANCE:
            unit = self.info.price_unit if self.info else "request"
            price = usd(self.info.base_price_usd or 0) if self.info else "?"
            earlier = f" after {usd(spent_usd)} spent by earlier tries" if spent_usd else ""
            raise BudgetExceededError(
                f"Not started: the {count} item(s) to submit of this batch of {self.model_id} cost an "
                f"estimated {usd(total)} ({priced} priced at {price} per {unit}){earlier}, over "
                f"max_cost_usd={usd(self.max_cost_usd)}. Nothing was submitted. Raise max_cost_usd or "
                "split the batch."
            )
        return total, priced

    def allows(self, payload: Mapping[str, Any], *, spent_usd: float, in_flight: int) -> bool:
        """Whether one more job of ``payload`` fits; False from the first refusal on.

        :param spent_usd: the recorded spend of the batch's finished jobs.
        :param in_flight: how many of its jobs are submitted and not finished.
        """
        if self.stopped:
            return False
        if self.max_cost_usd is None:
            return True
        estimate = self.estimate(payload)
        cost = estimate.usd if estimate is not None else 0.0
        per_job = self.job_estimate_usd if self.job_estimate_usd is not None else cost
        committed = spent_usd + in_flight * per_job
        if committed + cost > self.max_cost_usd + _TOLERANCE:
            self.stopped_reason = (
                f"max_cost_usd={usd(self.max_cost_usd)} reached: {usd(spent_usd)} spent and {in_flight} "
                f"job(s) in flight (about {usd(in_flight * per_job)}); the next item would cost "
                f"{estimate.describe() if estimate else 'an unknown amount'}. No further item is submitted; "
                "the jobs in flight are finished and kept"
            )
            return False
        return True
