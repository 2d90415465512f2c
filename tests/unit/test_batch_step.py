"""The batch's next move is decided without Airflow: finish, wait (for what, until when), fail, or stop at the deadline.

A real ``BatchRun`` over a real ledger on disk; the item states are written as the engine
writes them (``batch.transitions``). The operator only maps these answers to Airflow.
"""

from __future__ import annotations

import time
from pathlib import Path

from _helpers_batch import open_batch

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.step import (
    LIMBO_RECHECK,
    MAX_SECONDS_IN_PLACE,
    STAY_SECONDS,
    Action,
    Step,
    after_refill,
    after_wait,
    in_place_until,
    next_step,
    waits_in_place,
)
from airflow_provider_runcomfy.batch.submitting import RefillResult
from airflow_provider_runcomfy.batch.transitions import Event, change
from airflow_provider_runcomfy.client.errors import AuthenticationError

MODEL = "some/model"
NOW = 1_000_000.0


def batch_of(tmp_path: Path, *states: str) -> BatchRun:
    """A batch whose items are in ``states``, one item per state, reached through the table's rows."""
    run = open_batch(MODEL, tmp_path, [{"prompt": f"item {i}"} for i in range(len(states))])
    path = {
        L.READY: [],
        L.SUBMITTED: [(L.READY, Event.INTENDED), (L.INTENT, Event.ACCEPTED)],
        L.FINISHED: [
            (L.READY, Event.INTENDED),
            (L.INTENT, Event.ACCEPTED),
            (L.SUBMITTED, Event.OUTPUTS_READY),
        ],
        L.SUCCEEDED: [
            (L.READY, Event.INTENDED),
            (L.INTENT, Event.ACCEPTED),
            (L.SUBMITTED, Event.JOB_SUCCEEDED),
        ],
    }
    for item, state in zip(run.items, states, strict=True):
        run.ledger.append([change(Event.CHECKED, item.key, [None], index=item.index)])
        for start, event in path[state]:
            fields = (
                {"request_id": f"req-{item.index}", "submitted_at": NOW} if event is Event.ACCEPTED else {}
            )
            run.ledger.append([change(event, item.key, [start], **fields)])
    return run


def test_a_batch_with_nothing_in_flight_to_keep_or_to_submit_finishes(tmp_path: Path) -> None:
    run = batch_of(tmp_path, L.SUCCEEDED, L.SUCCEEDED)
    assert next_step(run, RefillResult(), deadline=None, now=NOW).action is Action.FINISH


def test_jobs_in_flight_with_more_to_submit_wait_for_the_refill_share(tmp_path: Path) -> None:
    step = next_step(batch_of(tmp_path, L.SUBMITTED, L.READY), RefillResult(), deadline=None, now=NOW)
    assert step.action is Action.WAIT
    assert [job[:2] for job in step.window] == [["req-0", step.window[0][1]]]
    assert step.wake_at is None  # woken by the jobs, not by a clock
    assert step.tail is False


def test_the_last_jobs_are_waited_for_as_the_tail(tmp_path: Path) -> None:
    step = next_step(batch_of(tmp_path, L.SUBMITTED, L.SUCCEEDED), RefillResult(), deadline=None, now=NOW)
    assert (step.action, step.tail, step.wake_at) == (Action.WAIT, True, None)


def test_submits_refused_by_429s_come_back_at_the_pause_s_end(tmp_path: Path) -> None:
    run = batch_of(tmp_path, L.READY, L.READY)
    step = next_step(run, RefillResult(refused=2, paused_until=NOW + 30), deadline=None, now=NOW)
    assert (step.action, step.window, step.wake_at) == (Action.WAIT, [], NOW + 30)
    # Refused without a pause: try again shortly.
    assert next_step(run, RefillResult(refused=2), deadline=None, now=NOW).wake_at == NOW + 1.0


def test_outputs_left_to_keep_are_tried_again_a_little_later(tmp_path: Path) -> None:
    step = next_step(batch_of(tmp_path, L.FINISHED), RefillResult(), deadline=None, now=NOW)
    assert (step.action, step.wake_at, step.tail) == (Action.WAIT, NOW + 5.0, True)


def test_another_execution_s_fresh_intent_is_looked_at_again_soon(tmp_path: Path) -> None:
    run = batch_of(tmp_path, L.READY)
    now = time.time()  # an intent's freshness is judged on the clock
    run.ledger.append([change(Event.INTENDED, run.items[0].key, [L.READY], owner="another", intent_at=now)])
    step = next_step(run, RefillResult(), deadline=None, now=now)
    # Not paid again from here, and not waited on for its whole grace: looked at again in a few seconds.
    assert (step.action, step.wake_at, step.tail) == (Action.WAIT, now + LIMBO_RECHECK, True)


def test_the_deadline_stops_a_batch_with_jobs_in_flight_but_not_a_finished_one(tmp_path: Path) -> None:
    assert next_step(batch_of(tmp_path / "a", L.SUBMITTED), RefillResult(), deadline=NOW, now=NOW).action is (
        Action.TIMED_OUT
    )
    assert next_step(batch_of(tmp_path / "b", L.SUCCEEDED), RefillResult(), deadline=NOW, now=NOW).action is (
        Action.FINISH
    )


def test_a_refused_token_fails_the_batch_and_says_a_clear_re_attaches() -> None:
    assert after_refill(RefillResult(submitted=3)) is None
    step = after_refill(RefillResult(fatal=AuthenticationError("RunComfy rejected the token.")))
    assert step is not None and step.action is Action.FAIL
    assert step.message is not None
    assert step.message.startswith("RunComfy rejected the token.")
    assert "a clear of the task re-attaches" in step.message


def test_a_wait_shorter_than_a_deferral_s_round_trip_is_made_in_place() -> None:
    wait = Step(Action.WAIT, window=[["req-0", "k", NOW]])
    assert waits_in_place(wait, NOW + 1.0, part_started=NOW, now=NOW) is True
    assert waits_in_place(wait, NOW + STAY_SECONDS, part_started=NOW, now=NOW) is True
    # Jobs due later than that: the worker defers (the slot is free while they run).
    assert waits_in_place(wait, NOW + STAY_SECONDS + 0.1, part_started=NOW, now=NOW) is False
    # No estimate (the batch's job time is not known yet): defer.
    assert waits_in_place(wait, None, part_started=NOW, now=NOW) is False


def test_a_worker_part_defers_once_it_has_run_its_time_in_place() -> None:
    # However many waits it made: the bound is the part's age, so small refills do not shorten it.
    wait = Step(Action.WAIT, window=[["req-0", "k", NOW]])
    started = NOW - MAX_SECONDS_IN_PLACE
    assert waits_in_place(wait, NOW, part_started=started + 0.5, now=NOW) is True
    assert waits_in_place(wait, NOW, part_started=started, now=NOW) is False


def test_only_a_wait_is_made_in_place() -> None:
    for action in (Action.FINISH, Action.FAIL, Action.TIMED_OUT):
        assert waits_in_place(Step(action), NOW, part_started=NOW, now=NOW) is False


def test_a_wait_shorter_than_the_trigger_s_hold_is_made_in_place() -> None:
    # The trigger would keep its event back 10 s (Airflow's defaults): a job due in 8 s is waited for here.
    wait = Step(Action.WAIT, window=[["req-0", "k", NOW]])
    assert waits_in_place(wait, NOW + 8.0, part_started=NOW, now=NOW, stay_seconds=10.0) is True
    assert waits_in_place(wait, NOW + 10.5, part_started=NOW, now=NOW, stay_seconds=10.0) is False
    # With the guard off (no hold), the floor still applies.
    assert waits_in_place(wait, NOW + STAY_SECONDS, part_started=NOW, now=NOW, stay_seconds=0.0) is True


def test_a_wait_that_ended_with_jobs_or_at_its_wake_time_goes_on() -> None:
    assert after_wait({"status": "ready", "outcomes": []}) is None


def test_a_wait_that_reached_the_batch_s_deadline_times_the_batch_out() -> None:
    assert after_wait({"status": "timeout"}) == Step(Action.TIMED_OUT)


def test_a_wait_that_could_not_read_runcomfy_for_a_passing_reason_fails_so_that_a_retry_re_attaches() -> None:
    step = after_wait({"status": "error", "message": "RunComfy answered 503 five times.", "retryable": True})
    assert step == Step(
        Action.FAIL,
        message="RunComfy answered 503 five times. A retry of the task re-attaches to the jobs in flight.",
        retryable=True,
    )


def test_a_wait_refused_for_good_fails_and_says_a_clear_re_attaches() -> None:
    step = after_wait({"status": "error", "message": "RunComfy rejected the token.", "retryable": False})
    assert step == Step(
        Action.FAIL,
        message="RunComfy rejected the token. The jobs in flight are recorded; a clear re-attaches to them.",
    )
    assert step.retryable is False
    # An error event without a message still tells the user what became of the jobs.
    unsaid = after_wait({"status": "error"})
    assert unsaid is not None and unsaid.message == (
        "RunComfy could not be read. The jobs in flight are recorded; a clear re-attaches to them."
    )


def test_a_wait_in_place_lasts_as_long_as_a_deferral_would_at_least() -> None:
    # Jobs expected in 1 s: given up 3 s after that, unless the trigger's 10 s hold is longer.
    assert in_place_until(NOW + 1.0, now=NOW) == NOW + 1.0 + STAY_SECONDS
    assert in_place_until(NOW + 1.0, now=NOW, stay_seconds=10.0) == NOW + 10.0
    # Jobs expected later than the hold: 3 s after their expected end.
    assert in_place_until(NOW + 9.0, now=NOW, stay_seconds=10.0) == NOW + 9.0 + STAY_SECONDS
