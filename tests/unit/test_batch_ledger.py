"""The batch ledger on a real local folder: events folded in order, a checkpoint, resuming after a crash.

And ``BatchRun``'s bookkeeping on top of it: what a new try does with each recorded state
(the rules that keep a batch from paying twice) and which outcomes it accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _helpers_batch import open_batch
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items

MODEL = "blackforestlabs/flux-1-kontext/pro/edit"


@pytest.fixture
def folder(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}")


def ledger_files(folder: ObjectStoragePath) -> list[str]:
    return sorted(p.name for p in Path(folder.path, L.LEDGER_DIR).iterdir())


# -- folding events -------------------------------------------------------------------------------


def test_events_fold_in_order_onto_the_record(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    ledger.append([{"key": "a.0", "index": 0, "state": L.READY}])
    ledger.append([{"key": "a.0", "state": L.INTENT, "attempt": 1}])
    ledger.append([{"key": "a.0", "state": L.SUBMITTED, "request_id": "r1", "submitted_at": 5.0}])

    record = L.Ledger(folder, MODEL).load().get("a.0")
    assert record is not None
    assert (record.state, record.request_id, record.attempt, record.index) == (L.SUBMITTED, "r1", 1, 0)


def test_a_later_event_wins_even_in_one_segment(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    ledger.append([{"key": "a.0", "index": 0, "state": L.INTENT}, {"key": "a.0", "state": L.UNKNOWN}])
    assert L.Ledger(folder, MODEL).load().items["a.0"].state == L.UNKNOWN


def test_meta_events_merge(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    ledger.set_meta(try_number=1, try_id="t1")
    ledger.set_meta(try_number=2)
    assert L.Ledger(folder, MODEL).load().meta == {"try_number": 2, "try_id": "t1"}


def test_unknown_fields_in_an_event_are_ignored(folder: ObjectStoragePath) -> None:
    """A field a newer writer added must not break an older reader (nor become an attribute)."""
    L.Ledger(folder, MODEL).append([{"key": "a.0", "index": 0, "state": L.READY, "shiny": 1}])
    record = L.Ledger(folder, MODEL).load().items["a.0"]
    assert not hasattr(record, "shiny")
    assert record.state == L.READY


def test_compact_folds_every_event_into_one_checkpoint(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    for n in range(5):
        ledger.append([{"key": f"k.{n}", "index": n, "state": L.READY}])
    ledger.append([{"key": "k.2", "state": L.SUCCEEDED, "stored": [{"uri": "x"}]}])
    ledger.set_meta(try_number=1)
    ledger.compact(force=True)

    checkpoint, archive, head = ledger_files(folder)  # the succeeded item's record is in the archive
    assert (checkpoint, head) == (L.CHECKPOINT, L.HEAD) and archive.startswith("done-")
    again = L.Ledger(folder, MODEL).load()
    assert {k: r.state for k, r in again.items.items()} == {
        "k.0": L.READY,
        "k.1": L.READY,
        "k.2": L.SUCCEEDED,
        "k.3": L.READY,
        "k.4": L.READY,
    }
    assert again.items["k.2"].stored == [{"uri": "x"}]
    assert again.meta == {"try_number": 1}


def test_compact_waits_for_enough_segments(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    for n in range(L.COMPACT_AFTER_SEGMENTS - 1):
        ledger.append([{"key": f"k.{n}", "index": n}])
    ledger.compact()
    assert L.CHECKPOINT not in ledger_files(folder)
    ledger.append([{"key": "last.0", "index": 99}])
    ledger.compact()
    assert ledger_files(folder) == [L.CHECKPOINT, L.HEAD]


def test_events_after_a_checkpoint_apply_on_top_of_it(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    ledger.append([{"key": "a.0", "index": 0, "state": L.SUBMITTED, "request_id": "r1"}])
    ledger.compact(force=True)
    ledger.append([{"key": "a.0", "state": L.FINISHED, "outcome": {"status": "succeeded"}}])

    again = L.Ledger(folder, MODEL).load()
    assert again.items["a.0"].state == L.FINISHED
    assert again.items["a.0"].request_id == "r1"
    # A ledger resumed after a checkpoint numbers its next segment after every one before it.
    again.append([{"key": "a.0", "state": L.SUCCEEDED}])
    assert L.Ledger(folder, MODEL).load().items["a.0"].state == L.SUCCEEDED


# -- resuming after a crash -----------------------------------------------------------------------


def test_an_absent_ledger_is_empty(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL).load()
    assert ledger.items == {}
    assert ledger.meta == {}


@pytest.mark.parametrize(
    "left_behind",
    [
        json.dumps({"key": "a.0", "state": L.SUCCEEDED}) + "\n",  # written whole, not yet renamed
        '{"key": "a.0", "sta',  # cut short mid-line: must not make the ledger unreadable
    ],
)
def test_a_part_file_left_by_a_crash_never_counts_and_is_removed(
    folder: ObjectStoragePath, left_behind: str
) -> None:
    L.Ledger(folder, MODEL).append([{"key": "a.0", "index": 0, "state": L.READY}])
    part = Path(folder.path, L.LEDGER_DIR, "seg-000000002-abcdef.jsonl.1234abcd.part")
    part.write_text(left_behind)

    ledger = L.Ledger(folder, MODEL).load()
    assert ledger.items["a.0"].state == L.READY
    assert not part.exists()


def test_segments_already_in_the_checkpoint_are_not_applied_again(folder: ObjectStoragePath) -> None:
    """A crash between writing the checkpoint and deleting the segments leaves both behind."""
    ledger = L.Ledger(folder, MODEL)
    ledger.append([{"key": "a.0", "index": 0, "state": L.SUBMITTED, "request_id": "r1"}])
    directory = Path(folder.path, L.LEDGER_DIR)
    (old_segment,) = directory.glob("seg-*")
    kept = old_segment.read_bytes()
    ledger.append([{"key": "a.0", "state": L.SUCCEEDED}])
    ledger.compact(force=True)
    old_segment.write_bytes(kept)  # the stale segment is back: it says SUBMITTED

    assert L.Ledger(folder, MODEL).load().items["a.0"].state == L.SUCCEEDED


def test_a_damaged_segment_is_an_error_not_an_empty_ledger(folder: ObjectStoragePath) -> None:
    L.Ledger(folder, MODEL).append([{"key": "a.0", "index": 0, "state": L.SUBMITTED, "request_id": "r1"}])
    (segment,) = Path(folder.path, L.LEDGER_DIR).glob("seg-*")
    segment.write_text('{"key": "a.0", "sta')
    with pytest.raises(L.LedgerReadError, match="damaged"):
        L.Ledger(folder, MODEL).load()


def test_a_ledger_of_another_model_is_refused(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, "someone/other-model")
    ledger.append([{"key": "a.0", "index": 0}])
    ledger.compact(force=True)
    with pytest.raises(L.LedgerReadError, match="model"):
        L.Ledger(folder, MODEL).load()


def test_a_checkpoint_of_another_version_is_refused(folder: ObjectStoragePath) -> None:
    directory = Path(folder.path, L.LEDGER_DIR)
    directory.mkdir()
    (directory / L.CHECKPOINT).write_bytes(L._sealed([json.dumps({"version": L.LEDGER_VERSION + 1})]))
    with pytest.raises(L.LedgerReadError, match="another version"):
        L.Ledger(folder, MODEL).load()


def test_item_record_json_round_trip_drops_empty_fields() -> None:
    record = L.ItemRecord(key="a.0", index=3, state=L.SUBMITTED, request_id="r1", submitted_at=1.5)
    data = record.to_json()
    assert data == {"key": "a.0", "index": 3, "state": L.SUBMITTED, "request_id": "r1", "submitted_at": 1.5}
    assert L.ItemRecord.from_json(data) == record


# -- a new try over the ledger (BatchRun) ---------------------------------------------------------


def batch_run(folder: ObjectStoragePath, n: int = 4, *, resubmit_unknown: bool = False) -> BatchRun:
    inputs = [{"prompt": f"p{i}", "image_url": "https://x.invalid/a.png"} for i in range(n)]
    return open_batch(MODEL, folder, inputs, resubmit_unknown=resubmit_unknown)


def record_states(run: BatchRun, states: list[dict[str, Any]]) -> None:
    run.ledger.append(
        [
            {"key": item.key, "index": item.index, **state}
            for item, state in zip(run.items, states, strict=True)
        ]
    )


PAST: list[dict[str, Any]] = [
    {"state": L.FAILED, "request_id": "r0", "outcome": {"status": "failed"}, "error": "boom"},
    {"state": L.CANCELLED, "request_id": "r1", "outcome": {"status": "cancelled"}},
    {"state": L.INTENT},  # the worker died while the submit was on the wire
    {"state": L.FAILED, "request_id": "r3", "outcome": {"status": "succeeded"}, "copy_failures": 3},
]


def test_a_new_try_resubmits_only_what_provably_has_no_result(folder: ObjectStoragePath) -> None:
    run = batch_run(folder)
    record_states(run, PAST)
    run.start_try(2, "try-2")

    resumed = batch_run(folder)  # as the next worker part reads it back
    states = [resumed.record(item).state for item in resumed.items]  # type: ignore[union-attr]
    assert states == [L.READY, L.READY, L.UNKNOWN, L.FINISHED]
    first, _, unknown, copy_again = (resumed.record(item) for item in resumed.items)
    assert first is not None and first.request_id is None and first.outcome is None
    assert unknown is not None and "on_unknown_submit='resubmit'" in str(unknown.error)
    assert copy_again is not None and copy_again.request_id == "r3" and copy_again.copy_failures == 0
    assert resumed.ledger.meta["try_id"] == "try-2"


def test_resubmit_unknown_pays_again_for_an_intent(folder: ObjectStoragePath) -> None:
    run = batch_run(folder, resubmit_unknown=True)
    record_states(run, PAST)
    run.start_try(2, "try-2")
    assert run.record(run.items[2]).state == L.READY  # type: ignore[union-attr]


def test_the_same_try_resuming_changes_nothing(folder: ObjectStoragePath) -> None:
    """A deferred task wakes many times within one try: only a new try id re-plans the items."""
    run = batch_run(folder)
    run.start_try(1, "try-1")
    record_states(run, PAST)
    batch_run(folder).start_try(1, "try-1")
    assert [batch_run(folder).record(item).state for item in run.items] == [p["state"] for p in PAST]  # type: ignore[union-attr]


def test_outcomes_are_recorded_only_for_the_job_the_ledger_expects(folder: ObjectStoragePath) -> None:
    run = batch_run(folder, n=3)
    submitted = {"state": L.SUBMITTED, "submitted_at": 1.0}
    record_states(run, [{**submitted, "request_id": f"r{i}"} for i in range(3)])
    a, b, c = run.items
    run.apply_outcomes(
        [
            {"key": a.key, "request_id": "r0", "status": "succeeded", "outputs": ["https://o/0.png"]},
            {"key": b.key, "request_id": "stale", "status": "failed", "message": "x"},  # an older job
            {"key": c.key, "request_id": "r2", "status": "failed", "message": "bad prompt"},
        ]
    )
    resumed = batch_run(folder, n=3)
    assert [resumed.record(i).state for i in resumed.items] == [L.FINISHED, L.SUBMITTED, L.FAILED]  # type: ignore[union-attr]
    assert resumed.record(c).error == "bad prompt"  # type: ignore[union-attr]
    assert resumed.in_flight() == [["r1", b.key, 1.0]]


def test_every_way_a_wait_ends_is_recorded_as_outcome_says(folder: ObjectStoragePath) -> None:
    """The wait's events, as ``Outcome.to_event`` writes them: one ledger state per kind.

    A success with outputs is copied next, one without is done; a cancel is cancelled; a
    failure, a timeout, an error and a word no version wrote all fail the item, naming why.
    """
    from airflow_provider_runcomfy.client.outcome import Outcome, OutcomeKind

    run = batch_run(folder, n=6)
    record_states(run, [{"state": L.SUBMITTED, "request_id": f"r{i}", "submitted_at": 1.0} for i in range(6)])
    ended = [
        Outcome(OutcomeKind.SUCCEEDED, "r0", outputs=("https://o/0.png",)).to_event(),
        Outcome(OutcomeKind.SUCCEEDED, "r1").to_event(),
        Outcome(OutcomeKind.CANCELLED, "r2").to_event(),
        Outcome(OutcomeKind.TIMEOUT, "r3", message="gave up after 3600 s").to_event(),
        Outcome(OutcomeKind.ERROR, "r4").to_event(),
        {"request_id": "r5", "status": "exploded"},
    ]
    run.apply_outcomes([{**event, "key": item.key} for event, item in zip(ended, run.items, strict=True)])
    resumed = batch_run(folder, n=6)
    records = [resumed.record(item) for item in resumed.items]
    assert [r.state for r in records] == [  # type: ignore[union-attr]
        L.FINISHED,
        L.SUCCEEDED,
        L.CANCELLED,
        L.FAILED,
        L.FAILED,
        L.FAILED,
    ]
    assert [r.error for r in records[2:]] == ["cancelled", "gave up after 3600 s", "error", "exploded"]  # type: ignore[union-attr]


def test_reordered_inputs_keep_their_records(folder: ObjectStoragePath) -> None:
    run = batch_run(folder, n=2)
    record_states(run, [{"state": L.SUCCEEDED, "request_id": "r0"}, {"state": L.READY}])
    first, second = run.items
    swapped = make_items(MODEL, [second.input, first.input])
    assert run.ledger.get(swapped[1].key).request_id == "r0"  # type: ignore[union-attr]
