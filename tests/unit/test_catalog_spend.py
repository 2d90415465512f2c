"""What an input will cost, and a batch budget that stops submitting before it is exceeded."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_runcomfy.client import ModelInfo
from airflow_provider_runcomfy.models.spend import (
    Budget,
    BudgetExceededError,
    check_max_cost,
    estimate_cost,
    refuse_over_budget,
)


def info(price: Any, unit: Any, schema: dict[str, Any] | None = None) -> ModelInfo:
    return ModelInfo.model_validate({"base_price_usd": price, "price_unit": unit, "input_schema": schema})


VIDEO_SCHEMA = {"type": "object", "properties": {"duration": {"enum": [5, 10], "default": 5}}}
IMAGES_SCHEMA = {"type": "object", "properties": {"num_images": {"type": "integer", "default": 1}}}


@pytest.mark.parametrize(
    ("model", "payload", "usd"),
    [
        (info(0.01, "request"), {"scale": 4}, 0.01),
        (info(0.039, "image", IMAGES_SCHEMA), {"num_images": 3}, 0.117),
        (info(0.039, "image", IMAGES_SCHEMA), {}, 0.039),
        (info(0.04, "image"), {"prompt": "one image"}, 0.04),
        (info(0.05, "second", VIDEO_SCHEMA), {"duration": 10}, 0.5),
        (info(0.05, "second", VIDEO_SCHEMA), {}, 0.25),
        (info(0.05, "second"), {"duration": "8s"}, 0.4),
        (info(0.05, "per_second"), {"duration_seconds": 4}, 0.2),
    ],
)
def test_the_estimate_is_price_times_what_the_input_asks_for(
    model: ModelInfo, payload: dict[str, Any], usd: float
) -> None:
    estimate = estimate_cost(model, payload)
    assert estimate is not None
    assert estimate.usd == pytest.approx(usd)


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (None, {}),
        (info(None, "image"), {}),
        (info("free", "image"), {}),
        (info(float("nan"), "image"), {}),
        (info(-1, "request"), {}),
        (info(0.05, "second"), {}),  # no duration and no default: not known
        (info(0.05, "second"), {"duration": "long"}),
        (info(0.05, "token"), {}),  # a unit this provider does not know
    ],
)
def test_an_estimate_that_cannot_be_known_is_none(model: ModelInfo | None, payload: dict[str, Any]) -> None:
    assert estimate_cost(model, payload) is None


def test_the_estimate_says_how_it_was_made() -> None:
    estimate = estimate_cost(info(0.039, "image"), {"num_images": 2})
    assert estimate is not None
    assert estimate.describe() == "$0.0780 (2 images x $0.0390 per image)"


def test_one_job_over_its_budget_is_refused_and_one_at_the_limit_is_not() -> None:
    video = info(0.05, "second", VIDEO_SCHEMA)
    refuse_over_budget("v", estimate_cost(video, {"duration": 5}), 0.25)
    refuse_over_budget("v", None, 0.0)  # unknown price: not known to exceed
    with pytest.raises(
        BudgetExceededError, match=r"costs an estimated \$0\.5000 .* over max_cost_usd=\$0\.3000"
    ):
        refuse_over_budget("v", estimate_cost(video, {"duration": 10}), 0.3)


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), "5", True])
def test_max_cost_usd_must_be_dollars(value: Any) -> None:
    with pytest.raises(ValueError, match="max_cost_usd must be a number of dollars"):
        check_max_cost(value)


def test_a_batch_over_its_budget_does_not_start() -> None:
    budget = Budget(0.10, "m", info(0.04, "request"))
    with pytest.raises(
        BudgetExceededError, match=r"the 3 item\(s\) to submit .* \$0\.1200 .* Nothing was submitted"
    ):
        budget.check_batch([{}] * 3)
    assert Budget(0.12, "m", info(0.04, "request")).check_batch([{}] * 3) == (pytest.approx(0.12), 3)


def test_a_batch_stops_submitting_when_the_next_item_would_exceed_the_budget() -> None:
    budget = Budget(0.10, "m", info(0.04, "request"))
    budget.check_batch([{}] * 2)
    assert budget.allows({}, spent_usd=0.0, in_flight=0)
    assert budget.allows({}, spent_usd=0.0, in_flight=1)
    assert not budget.allows({}, spent_usd=0.04, in_flight=1)  # 0.04 + 0.04 in flight + 0.04 > 0.10
    assert budget.stopped and "max_cost_usd=$0.1000 reached" in (budget.stopped_reason or "")
    assert not budget.allows(
        {}, spent_usd=0.0, in_flight=0
    )  # stopped for good: in flight finish, nothing new


def test_jobs_in_flight_count_at_the_batchs_mean_estimate() -> None:
    budget = Budget(1.0, "m", info(0.05, "second", VIDEO_SCHEMA))
    budget.check_batch([{"duration": 5}, {"duration": 10}, {}])  # 0.25, 0.50, 0.25: mean 1/3
    assert budget.job_estimate_usd == pytest.approx(1 / 3)
    assert budget.allows({"duration": 5}, spent_usd=0.0, in_flight=2)  # 0.667 + 0.25
    assert not budget.allows({"duration": 10}, spent_usd=0.0, in_flight=2)  # 0.667 + 0.5


def test_spend_of_an_earlier_try_counts_against_the_budget() -> None:
    budget = Budget(0.10, "m", info(0.04, "request"))
    with pytest.raises(BudgetExceededError, match=r"after \$0\.0800 spent by earlier tries"):
        budget.check_batch([{}], spent_usd=0.08)
    assert not budget.allows({}, spent_usd=0.08, in_flight=0)


def test_without_a_price_only_reported_costs_count() -> None:
    budget = Budget(0.05, "m", None)
    assert budget.check_batch([{}] * 100) == (0.0, 0)
    assert budget.allows({}, spent_usd=0.04, in_flight=5)
    assert not budget.allows({}, spent_usd=0.06, in_flight=0)


def test_without_a_budget_everything_is_allowed() -> None:
    budget = Budget(None, "m", info(100.0, "request"))
    assert budget.check_batch([{}] * 10) == (1000.0, 10)
    assert budget.allows({}, spent_usd=1e6, in_flight=1000)
