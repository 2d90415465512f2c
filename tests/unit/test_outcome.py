"""The outcome contract: one rule for what an answer means, and an outcome that survives the trigger boundary."""

from __future__ import annotations

import json

import pytest

from airflow_provider_runcomfy.client import (
    Finality,
    JobFailedError,
    JobTimeoutError,
    Outcome,
    OutcomeKind,
    RequestResult,
    RequestStatus,
    RunComfyError,
    ServerError,
    TransportError,
    error_class_for_kind,
    finality,
)
from airflow_provider_runcomfy.client.outcome import MAX_MESSAGE_CHARS, event_kind


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("in_queue", Finality.WAITING),
        ("in_progress", Finality.WAITING),
        ("completed", Finality.NOT_WRITTEN),
        ("succeeded", Finality.SUCCEEDED),
        ("failed", Finality.FAILED),
        ("cancelled", Finality.CANCELLED),
    ],
)
def test_one_table_reads_status_and_result_answers_alike(state: str, expected: Finality) -> None:
    assert finality(RequestStatus(request_id="r", status=state)) is expected  # type: ignore[arg-type]
    assert finality(RequestResult(request_id="r", status=state)) is expected  # type: ignore[arg-type]


def test_a_state_word_this_version_does_not_know_means_keep_waiting_on_the_id() -> None:
    answer = RequestResult.model_construct(request_id="r", status="paused")
    assert finality(answer) is Finality.NOT_WRITTEN
    assert not finality(answer).is_outcome


def test_only_a_final_result_has_an_outcome() -> None:
    with pytest.raises(ValueError, match="keep waiting"):
        Outcome.from_result(RequestResult(request_id="r", status="completed"), None)  # type: ignore[arg-type]


def test_a_succeeded_result_round_trips_through_a_json_event() -> None:
    result = RequestResult(
        request_id="r",
        status="succeeded",  # type: ignore[arg-type]
        output={"images": ["https://cdn/a.png", "https://cdn/b.png", "https://cdn/a.png"]},
        created_at="t0",
        finished_at="t1",
        cost=0.08,
        model_id="m/from/result",
    )
    outcome = Outcome.from_result(result, None)
    assert outcome.succeeded
    assert outcome.outputs == ("https://cdn/a.png", "https://cdn/b.png")
    assert outcome.model_id == "m/from/result"
    assert outcome.cost_usd == 0.08
    assert Outcome.from_event(json.loads(json.dumps(outcome.to_event()))) == outcome


def test_a_failed_result_raises_runcomfys_reason() -> None:
    outcome = Outcome.from_result(
        RequestResult(request_id="r", status="failed", error={"message": "oom"}),  # type: ignore[arg-type]
        "m/x",
    )
    error = Outcome.from_event(outcome.to_event()).to_error()
    assert isinstance(error, JobFailedError)
    assert error.message == "RunComfy request r failed: oom"
    assert error.request_id == "r"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (JobTimeoutError("late"), OutcomeKind.TIMEOUT),
        (ServerError("down"), OutcomeKind.ERROR),
        (TransportError("reset", request_sent=False), OutcomeKind.ERROR),
    ],
)
def test_an_error_crosses_the_trigger_boundary_as_its_registered_kind(
    error: RunComfyError, kind: OutcomeKind
) -> None:
    event = json.loads(json.dumps(Outcome.from_error(error, "r", "m/x").to_event()))
    outcome = Outcome.from_event(event)
    assert outcome.kind is kind
    back = outcome.to_error()
    assert type(back) is type(error)
    assert back.message == error.message


def test_an_error_class_appended_later_registers_itself() -> None:
    class QuotaExceededForTestError(RunComfyError):
        """What a helper appending to errors.py gets for free."""

    assert error_class_for_kind("QuotaExceededForTestError") is QuotaExceededForTestError
    event = Outcome.from_error(QuotaExceededForTestError("over"), "r", None).to_event()
    assert event["error_kind"] == "QuotaExceededForTestError"
    assert isinstance(Outcome.from_event(event).to_error(), QuotaExceededForTestError)


def test_an_unknown_kind_comes_back_as_the_base_error() -> None:
    assert error_class_for_kind("NotAKind") is RunComfyError
    assert error_class_for_kind(None) is RunComfyError


def test_a_huge_message_is_truncated_where_the_outcome_is_built() -> None:
    outcome = Outcome.from_error(ServerError("x" * 10_000_000), "r", None)
    assert len(outcome.message) <= MAX_MESSAGE_CHARS
    assert len(json.dumps(outcome.to_event())) < MAX_MESSAGE_CHARS + 500


def test_a_garbled_event_fails_the_task_instead_of_passing_for_success() -> None:
    outcome = Outcome.from_event({"status": "maybe", "request_id": "r"})
    assert outcome.kind is OutcomeKind.ERROR
    assert "unexpected event" in outcome.to_error().message


def test_an_event_or_the_part_a_batch_keeps_of_it_says_how_the_wait_ended() -> None:
    """``event_kind`` is how code holding an outcome as a dict asks what it means."""
    for kind in OutcomeKind:
        event = Outcome(kind, "r1").to_event()
        assert event_kind(event) is kind
        assert event_kind({"status": event["status"]}) is kind  # the batch keeps only a part
    assert event_kind({"status": "exploded"}) is None
    assert event_kind({}) is None
