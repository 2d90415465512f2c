"""A resumed worker part costs what changed: the inputs file is read forward, final records stay archived.

The inputs of a JSON-lines file are read forward from the position the last worker part
recorded (``batch.items.load_items``); an edited file is read again and its changed lines
are new items. Items in a final state leave the checkpoint for the archive, which a resumed
part does not read -- and never takes for unchecked (that would pay for them again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _helpers_batch import LOG
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import items as items_module
from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import INPUTS_INDEX, load_items, make_items
from airflow_provider_runcomfy.batch.report import manifest_rows, summary
from airflow_provider_runcomfy.outputs.files import resolve_output_dir

if TYPE_CHECKING:
    from tests.s3_fixture import MotoS3

pytest_plugins = ["tests.s3_fixture"]

MODEL = "blackforestlabs/flux-1-kontext/pro/edit"


def item(n: int, text: str = "") -> dict[str, Any]:
    return {"prompt": f"item {n:03d}{text}", "input_image": f"https://images.example.com/{n:03d}.png"}


def write_lines(path: Path, inputs: list[dict[str, Any]], *, last_newline: bool = True) -> None:
    text = "".join(json.dumps(i) + "\n" for i in inputs)
    path.write_text(text if last_newline else text.rstrip("\n"))


@pytest.fixture
def folder(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}/task")


@pytest.fixture
def fingerprints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many inputs were fingerprinted (the real function, counted): what a re-read costs."""
    calls: list[int] = []
    real = items_module.input_fingerprint

    def counted(model_id: str, value: Any) -> str:
        calls.append(1)
        return real(model_id, value)

    monkeypatch.setattr(items_module, "input_fingerprint", counted)
    return calls


def test_a_resumed_part_reads_only_the_lines_added_since_the_last_one(
    tmp_path: Path, folder: ObjectStoragePath, fingerprints: list[int]
) -> None:
    lines = tmp_path / "inputs.jsonl"
    write_lines(lines, [item(n) for n in range(5)])
    first = load_items(MODEL, str(lines), folder)
    assert len(fingerprints) == 5

    again = load_items(MODEL, str(lines), folder)
    assert len(fingerprints) == 5  # nothing new: no line parsed or fingerprinted again
    assert again.keys == first.keys
    assert [i.input for i in again] == [item(n) for n in range(5)]  # read back from their lines

    write_lines(lines, [item(n) for n in range(8)])  # appended
    grown = load_items(MODEL, str(lines), folder)
    assert len(fingerprints) == 8
    assert grown.keys == [i.key for i in make_items(MODEL, [item(n) for n in range(8)])]


def test_an_edited_inputs_file_is_read_again_and_its_changed_lines_are_new_items(
    tmp_path: Path, folder: ObjectStoragePath, fingerprints: list[int]
) -> None:
    lines = tmp_path / "inputs.jsonl"
    write_lines(lines, [item(0), item(1), item(2)])
    before = load_items(MODEL, str(lines), folder)

    changed = [item(2), item(9, "new"), item(0)]
    write_lines(lines, changed)
    after = load_items(MODEL, str(lines), folder)

    assert len(fingerprints) == 6  # the whole file again: its first bytes changed
    expected = [i.key for i in make_items(MODEL, changed)]
    assert after.keys == expected
    assert set(after.keys) & set(before.keys) == {before.keys[0], before.keys[2]}
    assert [i.input for i in after] == changed


def test_identical_inputs_keep_counting_across_the_recorded_position(
    tmp_path: Path, folder: ObjectStoragePath
) -> None:
    lines = tmp_path / "inputs.jsonl"
    write_lines(lines, [item(1), item(2)])
    load_items(MODEL, str(lines), folder)
    write_lines(lines, [item(1), item(2), item(1), item(1)])

    assert load_items(MODEL, str(lines), folder).keys == [
        i.key for i in make_items(MODEL, [item(1), item(2), item(1), item(1)])
    ]


def test_a_last_line_still_being_written_is_read_but_not_recorded(
    tmp_path: Path, folder: ObjectStoragePath
) -> None:
    lines = tmp_path / "inputs.jsonl"
    write_lines(lines, [item(0), item(1)], last_newline=False)
    assert [i.input for i in load_items(MODEL, str(lines), folder)] == [item(0), item(1)]

    # The writer finishes the line it was writing, with other content: that one is what counts.
    lines.write_text(json.dumps(item(0)) + "\n" + json.dumps(item(1, " finished")) + "\n")
    assert [i.input for i in load_items(MODEL, str(lines), folder)] == [item(0), item(1, " finished")]


def test_a_damaged_inputs_index_only_means_reading_the_file_again(
    tmp_path: Path, folder: ObjectStoragePath, fingerprints: list[int]
) -> None:
    lines = tmp_path / "inputs.jsonl"
    write_lines(lines, [item(n) for n in range(4)])
    first = load_items(MODEL, str(lines), folder)
    index = Path(folder.path, INPUTS_INDEX)
    index.write_bytes(index.read_bytes()[:-10])

    assert load_items(MODEL, str(lines), folder).keys == first.keys
    assert len(fingerprints) == 8


# -- the archive ----------------------------------------------------------------------------------


def finished_batch(folder: ObjectStoragePath, n: int) -> BatchRun:
    """A batch of ``n`` items: the first half succeeded (compacted into the archive), the rest in flight."""
    run = BatchRun(
        MODEL,
        make_items(MODEL, [item(i) for i in range(n)]),
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=n,
        max_output_bytes=1 << 20,
        resubmit_unknown=False,
        log=LOG,
    )
    run.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in run.items])
    run.ledger.append(
        [
            {
                "key": i.key,
                "state": L.SUCCEEDED if i.index < n // 2 else L.SUBMITTED,
                "request_id": f"r{i.index}",
                "outcome": {"status": "succeeded", "cost_usd": 0.5} if i.index < n // 2 else None,
            }
            for i in run.items
        ]
    )
    run.ledger.compact(force=True)
    return run


def resumed(folder: ObjectStoragePath, n: int) -> BatchRun:
    return BatchRun(
        MODEL,
        make_items(MODEL, [item(i) for i in range(n)]),
        L.Ledger(folder, MODEL).load(archive=False),
        folder,
        max_in_flight=n,
        max_output_bytes=1 << 20,
        resubmit_unknown=False,
        log=LOG,
    )


def archive_files(folder: ObjectStoragePath) -> list[Path]:
    return sorted(Path(folder.path, L.LEDGER_DIR).glob("done-*.jsonl"))


def test_a_resumed_part_counts_the_archive_without_reading_it(folder: ObjectStoragePath) -> None:
    finished_batch(folder, 10)
    (archive,) = archive_files(folder)
    archive.write_bytes(b"")  # damaged: a part that read it would stop

    run = resumed(folder, 10)
    assert run.done_count() == 5
    assert run.spend().spent_usd == 2.5
    assert run.unchecked_count() == 0
    assert len(run.in_flight()) == 5

    with pytest.raises(L.LedgerDamagedError, match="is empty"):
        run.ledger.get(run.items[0].key)  # asked for: read, and the damage is seen
    with pytest.raises(L.LedgerDamagedError, match="is empty"):
        L.Ledger(folder, MODEL).load()  # a new execution reads it all


def test_the_part_that_writes_the_manifest_reads_archived_records_one_at_a_time(
    folder: ObjectStoragePath,
) -> None:
    finished_batch(folder, 10)
    run = resumed(folder, 10)
    run.apply_outcomes(
        [{"key": i.key, "request_id": f"r{i.index}", "status": "succeeded"} for i in run.items[5:]]
    )

    rows = list(manifest_rows(run))
    result = summary(run, "file:///manifest.jsonl")
    assert [r["status"] for r in rows] == ["succeeded"] * 10
    assert [r["request_id"] for r in rows] == [f"r{n}" for n in range(10)]
    assert result["succeeded"] == 10 and result["cost_usd"] == 2.5
    assert [item.index for item, _ in run.records(L.SUCCEEDED)] == list(range(10))
    # Read back for the rows, not taken into memory: the archived five are still only keys.
    assert sorted(r.index for r in run.ledger.items.values()) == [5, 6, 7, 8, 9]
    # So the part's compaction adds a file of what became final instead of rewriting every record.
    run.ledger.compact(force=True)
    assert [len(p.read_text().splitlines()) for p in archive_files(folder)] == [6, 6]  # 5 records + end


def test_a_local_archive_is_read_back_by_offsets_and_its_damage_still_seen(folder: ObjectStoragePath) -> None:
    finished_batch(folder, 10)
    run = resumed(folder, 10)
    record = run.ledger.get(run.items[2].key)
    assert record is not None and (record.state, record.request_id) == (L.SUCCEEDED, "r2")
    view = run.ledger._archive
    assert view is not None and not any(isinstance(source, bytes) for _, source in view.sources)

    (archive,) = archive_files(folder)
    lines = archive.read_bytes().splitlines(keepends=True)
    for damaged, what in [
        (b"".join(lines[:-1]), "end record is missing"),  # cut at a line boundary
        (b"".join(lines)[:-7], "cut mid-line"),
        (b"".join(lines).replace(b'"r2"', b'"r9"'), "checksum does not match"),
    ]:
        archive.write_bytes(damaged)
        with pytest.raises(L.LedgerDamagedError, match=what):
            resumed(folder, 10).ledger.get(run.items[0].key)


def test_an_archive_on_object_storage_is_read_once_per_file(moto_s3: MotoS3) -> None:
    moto_s3.bucket("ledgers")
    folder = resolve_output_dir("s3://ledgers/task", probe=False)  # as the operator opens output_dir
    finished_batch(folder, 6)
    run = resumed(folder, 6)

    assert [r["request_id"] for r in manifest_rows(run)][:3] == ["r0", "r1", "r2"]
    view = run.ledger._archive
    assert view is not None and all(isinstance(source, bytes) for _, source in view.sources)


def test_a_resumed_part_never_takes_an_archived_item_for_a_new_one(folder: ObjectStoragePath) -> None:
    finished_batch(folder, 6)
    run = resumed(folder, 6)

    checked: list[Any] = []
    invalid = run.check(lambda items: checked.extend(items) or [], lambda model, body: body)

    assert checked == []  # nothing to check: succeeded items are not new
    assert invalid == 0
    # A check's record of a new item expects none yet: over an archived one it does not apply.
    run.ledger.append([{"key": run.items[0].key, "index": 0, "state": L.READY, "expect": {"state": [None]}}])
    run.ledger.compact(force=True)
    record = L.Ledger(folder, MODEL).load().get(run.items[0].key)
    assert record is not None and record.state == L.SUCCEEDED  # never ready (and paid) again


def test_the_archive_grows_by_what_became_final_and_a_full_reader_folds_it(folder: ObjectStoragePath) -> None:
    finished_batch(folder, 6)
    run = resumed(folder, 6)
    run.apply_outcomes(
        [{"key": i.key, "request_id": f"r{i.index}", "status": "succeeded"} for i in run.items[3:]]
    )
    run.ledger.compact(force=True)
    assert len(archive_files(folder)) == 2  # the earlier file is not rewritten by a resumed part

    full = L.Ledger(folder, MODEL).load()
    assert sorted(r.state for r in full) == [L.SUCCEEDED] * 6
    full.set_meta(note="new try")
    full.compact(force=True)
    assert len(archive_files(folder)) == 1
    assert L.Ledger(folder, MODEL).load().spent_usd() == 1.5


def test_a_new_try_reset_of_an_archived_item_is_seen_by_the_next_resumed_part(
    folder: ObjectStoragePath,
) -> None:
    run = finished_batch(folder, 4)
    key = run.items[0].key
    run.ledger.append([{"key": key, "state": L.FAILED, "expect": {"state": [L.SUCCEEDED]}}])
    run.ledger.compact(force=True)  # archived as failed

    new_try = L.Ledger(folder, MODEL).load()  # a clear: it reads everything and resets the failed item
    new_try.append([{"key": key, "state": L.READY, "request_id": None, "expect": {"state": [L.FAILED]}}])
    # ... and defers before its segments are folded (a crash, or a compaction not yet due)

    record = L.Ledger(folder, MODEL).load(archive=False).get(key)
    assert record is not None and record.state == L.READY  # not the archived 'failed'
