"""Model info read once per task, and the checks made with it before a paid submit.

Real HTTP against the emulator; the emulator's journal counts what was asked.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from airflow_provider_runcomfy.client import (
    InvalidInputError,
    ModelInfo,
    RunComfyClient,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import NANO_BANANA_EDIT
from airflow_provider_runcomfy.models.catalog import (
    BatchGuard,
    InputChecker,
    ModelLookup,
    SchemaUnavailableError,
    check_before_submit,
    check_on_schema_unavailable,
    read_model,
)
from airflow_provider_runcomfy.models.spend import BudgetExceededError

VIDEO = "wan-ai/wan-2-2/image-to-video"
UNLISTED = "acme/unlisted/model"
IMAGE = "https://images.example.com/in.png"
GOOD_VIDEO = {"prompt": "a cat walks", "image_url": IMAGE, "duration": 10}


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> RunComfyClient:
    return RunComfyClient(token=runcomfy_emulator.token, base_url=runcomfy_emulator.base_url)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def model_reads(emulator: RunComfyEmulator) -> int:
    return emulator.journal.count("model")


# -- reading the model info: once per task ---------------------------------------------------------


def test_the_schema_is_compiled_once_for_every_check_of_a_lookup(client: RunComfyClient) -> None:
    found = read_model(VIDEO, client.get_model)
    assert found.info is not None and found.info.price_unit == "second"
    assert found.validator is found.validator
    assert not isinstance(found.validator, str)


def test_a_batch_in_an_outage_asks_once_and_is_not_raised_at(
    runcomfy_emulator: RunComfyEmulator, client: RunComfyClient
) -> None:
    """A failed read is the answer for the whole batch: an outage is not asked once per item."""
    runcomfy_emulator.add_fault("model", "http", times=None, status=503)
    checks = guard(client, VIDEO, log=logging.getLogger("t"))
    checks.validate(VIDEO, GOOD_VIDEO)  # unchecked, with a warning: on_schema_unavailable="warn"
    assert checks.lookup.info is None and checks.lookup.problem and "503" in checks.lookup.problem
    reads = model_reads(runcomfy_emulator)  # the client's own retries of the one read
    for _ in range(20):
        checks.validate(VIDEO, GOOD_VIDEO)
    assert model_reads(runcomfy_emulator) == reads


# -- checking an input ----------------------------------------------------------------------------


def lookup(client: RunComfyClient, model_id: str) -> ModelLookup:
    return read_model(model_id, client.get_model)


def test_a_bad_input_is_refused_naming_the_field(client: RunComfyClient) -> None:
    checker = InputChecker(lookup(client, VIDEO))
    checker.check(GOOD_VIDEO)
    with pytest.raises(
        InvalidInputError, match=f"Invalid input for {VIDEO}: duration: 7 is not one of 5, 10"
    ):
        checker.check({**GOOD_VIDEO, "duration": 7})


@pytest.mark.parametrize("cause", ["unlisted", "outage", "unusable"])
def test_without_a_schema_the_input_goes_unchecked_with_one_warning(
    runcomfy_emulator: RunComfyEmulator,
    client: RunComfyClient,
    caplog: pytest.LogCaptureFixture,
    cause: str,
) -> None:
    if cause == "outage":
        runcomfy_emulator.add_fault("model", "http", times=None, status=503)
    found = lookup(client, UNLISTED if cause == "unlisted" else VIDEO)
    if cause == "unusable":
        found = ModelLookup(VIDEO, ModelInfo(input_schema={"type": 12}))
    checker = InputChecker(found, log=logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            checker.check({"anything": "goes"})
    warnings = [r.getMessage() for r in caplog.records if r.name == "t" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "submitted unchecked" in warnings[0] and "on_schema_unavailable='fail'" in warnings[0]
    assert not checker.available


def test_without_a_schema_fail_refuses(runcomfy_emulator: RunComfyEmulator, client: RunComfyClient) -> None:
    runcomfy_emulator.add_fault("model", "http", times=None, status=503)
    checker = InputChecker(lookup(client, VIDEO), on_unavailable="fail")
    with pytest.raises(SchemaUnavailableError, match="Not submitted: the input of .* cannot be checked"):
        checker.check(GOOD_VIDEO)


def test_on_schema_unavailable_must_be_warn_or_fail() -> None:
    with pytest.raises(ValueError, match="'warn' or 'fail'"):
        check_on_schema_unavailable("ignore")


def test_an_input_the_schema_lets_through_but_does_not_name_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = ModelLookup("m", ModelInfo(input_schema={"type": "object", "properties": {"prompt": {}}}))
    with caplog.at_level(logging.WARNING):
        InputChecker(found, log=logging.getLogger("t")).check({"prompt": "x", "promt": "y"})
    assert "promt are not in the published schema" in caplog.text


# -- the checks of one submit ---------------------------------------------------------------------


def test_nothing_is_read_when_no_check_needs_it(
    runcomfy_emulator: RunComfyEmulator, client: RunComfyClient
) -> None:
    def read() -> ModelLookup:
        raise AssertionError("model info read for nothing")

    assert check_before_submit(VIDEO, GOOD_VIDEO, read, check_schema=False) is None
    assert model_reads(runcomfy_emulator) == 0


def test_a_job_over_its_budget_is_refused(client: RunComfyClient, caplog: pytest.LogCaptureFixture) -> None:
    def read() -> ModelLookup:
        return lookup(client, VIDEO)

    with pytest.raises(BudgetExceededError, match=r"\$0\.5000 \(10 seconds x \$0\.0500 per second\)"):
        check_before_submit(VIDEO, GOOD_VIDEO, read, check_schema=True, max_cost_usd=0.3)
    with caplog.at_level(logging.INFO):
        estimate = check_before_submit(
            VIDEO,
            {**GOOD_VIDEO, "duration": 5},
            read,
            check_schema=True,
            max_cost_usd=0.3,
            log=logging.getLogger("t"),
        )
    assert estimate is not None and estimate.usd == pytest.approx(0.25)
    assert "Estimated price of this job" in caplog.text


def test_the_schema_is_checked_before_the_budget(client: RunComfyClient) -> None:
    bad: dict[str, Any] = {**GOOD_VIDEO, "duration": 60}
    with pytest.raises(InvalidInputError, match="duration: 60 is not one of 5, 10") as raised:
        check_before_submit(VIDEO, bad, lambda: lookup(client, VIDEO), check_schema=True, max_cost_usd=0.1)
    assert not isinstance(raised.value, BudgetExceededError)


def test_an_unknown_price_is_not_refused(client: RunComfyClient) -> None:
    found = lookup(client, UNLISTED)
    assert (
        check_before_submit(UNLISTED, {"x": 1}, lambda: found, check_schema=False, max_cost_usd=0.0) is None
    )


# -- the checks of a batch ------------------------------------------------------------------------


def guard(client: RunComfyClient, model_id: str, **kwargs: Any) -> BatchGuard:
    return BatchGuard(model_id, "conn", client.get_model, **kwargs)


def test_a_batch_of_a_seed_model_without_a_budget_reads_no_model_info(
    runcomfy_emulator: RunComfyEmulator, client: RunComfyClient
) -> None:
    checks = guard(client, NANO_BANANA_EDIT)
    for _ in range(10):
        checks.validate(NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [IMAGE]})
    checks.start([{}] * 10)
    assert checks.may_submit({}, spent_usd=100.0, in_flight=10)
    assert model_reads(runcomfy_emulator) == 0


def test_a_batch_checks_every_item_against_the_schema_with_one_read(
    runcomfy_emulator: RunComfyEmulator, client: RunComfyClient
) -> None:
    checks = guard(client, VIDEO)
    for duration in (5, 10) * 50:
        assert checks.validate(VIDEO, {**GOOD_VIDEO, "duration": duration})["duration"] == duration
    with pytest.raises(InvalidInputError, match="duration: 7 is not one of 5, 10"):
        checks.validate(VIDEO, {**GOOD_VIDEO, "duration": 7})
    assert model_reads(runcomfy_emulator) == 1


def test_a_batch_over_its_budget_is_refused_before_it_starts(client: RunComfyClient) -> None:
    checks = guard(client, VIDEO, max_cost_usd=1.0)
    with pytest.raises(BudgetExceededError, match=r"the 3 item\(s\) to submit .* \$1\.2500"):
        checks.start([GOOD_VIDEO, GOOD_VIDEO, {**GOOD_VIDEO, "duration": 5}])


def test_a_batch_stops_at_its_budget_and_says_why_once(
    client: RunComfyClient, caplog: pytest.LogCaptureFixture
) -> None:
    checks = guard(client, VIDEO, max_cost_usd=1.0, log=logging.getLogger("t"))
    checks.start([GOOD_VIDEO] * 2)
    assert checks.may_submit(GOOD_VIDEO, spent_usd=0.0, in_flight=0)
    assert checks.may_submit(GOOD_VIDEO, spent_usd=0.0, in_flight=1)
    with caplog.at_level(logging.WARNING):
        assert not checks.may_submit(GOOD_VIDEO, spent_usd=0.5, in_flight=1)
        assert not checks.may_submit(GOOD_VIDEO, spent_usd=0.0, in_flight=0)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "t" and r.levelno == logging.WARNING]
    assert warning.startswith("Budget: max_cost_usd=$1.0000 reached")


def test_a_batch_with_a_budget_reads_the_price_before_its_submit_loop(
    runcomfy_emulator: RunComfyEmulator, client: RunComfyClient
) -> None:
    guard(client, NANO_BANANA_EDIT).read_price()
    assert model_reads(runcomfy_emulator) == 0
    checks = guard(client, NANO_BANANA_EDIT, max_cost_usd=1.0).read_price()
    assert model_reads(runcomfy_emulator) == 1
    assert checks.may_submit({"num_images": 4}, spent_usd=0.0, in_flight=0)
    assert model_reads(runcomfy_emulator) == 1


# -- the operators' arguments, checked when the DAG is parsed ------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"max_cost_usd": -1}, {"max_cost_usd": "5"}, {"on_schema_unavailable": "skip"}]
)
def test_a_bad_budget_or_fallback_argument_is_refused_when_the_dag_is_parsed(kwargs: dict[str, Any]) -> None:
    from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
    from airflow_provider_runcomfy.operators.runcomfy import RunComfyModelOperator

    with pytest.raises(ValueError, match="max_cost_usd|on_schema_unavailable"):
        RunComfyModelOperator(task_id="t", model_id=VIDEO, input=GOOD_VIDEO, **kwargs)
    with pytest.raises(ValueError, match="max_cost_usd|on_schema_unavailable"):
        RunComfyBatchOperator(task_id="b", model_id=VIDEO, inputs=[GOOD_VIDEO], output_dir="/tmp/x", **kwargs)
