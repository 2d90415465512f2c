"""An item's life is one table: every row moves a real ledger record, anything else is refused before it is written.

The ledger is durable data, so the lines a change writes are pinned too: they are the
lines earlier versions wrote for the same change.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.transitions import (
    STATE_KEPT,
    TRANSITIONS,
    Event,
    IllegalTransitionError,
    change,
)

STATES: list[str | None] = [
    None,
    L.READY,
    L.INVALID,
    L.INTENT,
    L.SUBMITTED,
    L.FINISHED,
    L.SUCCEEDED,
    L.FAILED,
    L.CANCELLED,
    L.UNKNOWN,
]


@pytest.fixture
def ledger(tmp_path: Path) -> L.Ledger:
    return L.Ledger(ObjectStoragePath(f"file://{tmp_path}"), "some/model").load()


def _record_in(ledger: L.Ledger, state: str | None) -> str:
    """An item whose record is in ``state`` (or none at all), written as a ledger event like any other."""
    if state is not None:
        ledger.append([{"key": "item.0", "index": 0, "state": state, "request_id": "req-1", "owner": "me"}])
    return "item.0"


def _state(ledger: L.Ledger, key: str) -> str | None:
    record = ledger.get(key)
    return record.state if record is not None else None


@pytest.mark.parametrize(("start", "event"), list(TRANSITIONS), ids=lambda v: str(v))
def test_every_row_of_the_table_moves_a_ledger_record_to_its_state(
    ledger: L.Ledger, start: str | None, event: Event
) -> None:
    key = _record_in(ledger, start)
    written = change(event, key, [start], guard={"request_id": "req-1"} if start else None, index=0)
    assert ledger.append([written]) == [True]
    assert _state(ledger, key) == TRANSITIONS[(start, event)]
    assert ("state" in written) is (event not in STATE_KEPT)
    # Read back from disk, the record is where the change left it.
    assert _state(L.Ledger(ledger.folder, "some/model").load(), key) == TRANSITIONS[(start, event)]


@pytest.mark.parametrize(
    ("start", "event"),
    [pair for pair in itertools.product(STATES, Event) if pair not in TRANSITIONS],
    ids=lambda v: str(v),
)
def test_a_change_the_table_does_not_have_is_refused_before_it_is_written(
    ledger: L.Ledger, start: str | None, event: Event
) -> None:
    key = _record_in(ledger, start)
    with pytest.raises(IllegalTransitionError, match="bug in airflow_provider_runcomfy"):
        ledger.append([change(event, key, [start])])
    assert _state(ledger, key) == start


def test_a_change_from_several_states_must_be_allowed_from_each() -> None:
    # A submit's answer lands on an intent or on the unknown a newer execution made of it: both are rows.
    assert change(Event.ACCEPTED, "k.0", [L.INTENT, L.UNKNOWN])["state"] == L.SUBMITTED
    # A job cannot finish from ``ready``: one bad start state refuses the whole change.
    with pytest.raises(IllegalTransitionError, match="'outputs_ready'"):
        change(Event.OUTPUTS_READY, "k.0", [L.SUBMITTED, L.READY])
    with pytest.raises(IllegalTransitionError):
        change(Event.CHECKED, "k.0", [])


def test_the_state_and_its_guard_are_the_table_s_not_the_caller_s() -> None:
    with pytest.raises(IllegalTransitionError, match="set by the transition"):
        change(Event.KEPT, "k.0", [L.FINISHED], state=L.SUCCEEDED)


def test_the_lines_written_are_those_earlier_versions_wrote() -> None:
    """Field for field and in the same order: a ledger written before the table reads the same after it."""
    assert list(change(Event.CHECKED, "k.0", [None], index=3).items()) == list(
        {"key": "k.0", "index": 3, "state": L.READY, "expect": {"state": [None]}}.items()
    )
    assert list(
        change(
            Event.INTENDED, "k.0", [L.READY], index=3, try_number=2, attempt=1, owner="me", intent_at=5.0
        ).items()
    ) == list(
        {
            "key": "k.0",
            "index": 3,
            "state": L.INTENT,
            "try_number": 2,
            "attempt": 1,
            "owner": "me",
            "intent_at": 5.0,
            "expect": {"state": [L.READY]},
        }.items()
    )
    assert change(Event.ACCEPTED, "k.0", [L.INTENT, L.UNKNOWN], guard={"owner": "me"}, request_id="r") == {
        "key": "k.0",
        "state": L.SUBMITTED,
        "request_id": "r",
        "expect": {"state": [L.INTENT, L.UNKNOWN], "owner": "me"},
    }
    assert change(Event.KEEP_RETRY, "k.0", [L.FINISHED], guard={"request_id": "r"}, copy_failures=2) == {
        "key": "k.0",
        "copy_failures": 2,
        "expect": {"state": [L.FINISHED], "request_id": "r"},
    }
