"""A damaged batch ledger never leads to a blind submit, and ``on_damaged_ledger='reconcile'`` is the way back.

Real batches against the emulator over HTTP, a real ledger on a local disk: a finished batch
(every item kept, ledger compacted, manifest written) and a half-finished one (half the
items submitted and still queued, the rest ready). Then every ledger file is damaged the ways
a host crash or a person leaves it -- cut at a line boundary, cut mid-line, emptied, removed
-- and the task is "cleared": a new execution takes the batch over and reads the ledger.
What a user must see: the damage named (or, where the damage is harmless, the same records
as before), no new submit of anything already paid, the kept outputs still there.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers_batch import refill, wait_all
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items
from airflow_provider_runcomfy.batch.owner import Owner
from airflow_provider_runcomfy.batch.reconcile import reconcile
from airflow_provider_runcomfy.batch.report import manifest_rows
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL
from airflow_provider_runcomfy.outputs.manifest import write_manifest

N = 6
DAMAGES = ("cut_at_line", "cut_mid_line", "emptied", "removed")


def inputs(emu: RunComfyEmulator) -> list[dict[str, Any]]:
    return [{"prompt": f"item {i}", "image_url": emu.sample_url()} for i in range(N)]


def open_run(folder: ObjectStoragePath, emu: RunComfyEmulator, *, max_in_flight: int = N) -> BatchRun:
    """A new execution of the batch task, as the operator opens it: owner first, then the ledger."""
    owner = Owner.take(folder / L.LEDGER_DIR)
    return BatchRun(
        MODEL,
        make_items(MODEL, inputs(emu)),
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=max_in_flight,
        max_output_bytes=1 << 22,
        resubmit_unknown=False,
        log=__import__("logging").getLogger("batch-damage"),
        api_base_url=emu.base_url,
        owner=owner,
    )


def start(run: BatchRun) -> None:
    run.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in run.items])
    run.start_try(1, f"try-{time.time()}")


def finished_batch(folder: ObjectStoragePath, emu: RunComfyEmulator) -> BatchRun:
    run = open_run(folder, emu)
    start(run)
    assert asyncio.run(refill(run, emu)) == N
    asyncio.run(wait_all(run, emu))
    assert run.store_outputs() == N
    write_manifest(folder / "manifest.jsonl", manifest_rows(run))
    run.ledger.compact(force=True)
    assert sorted(r.state for r in run.ledger) == [L.SUCCEEDED] * N
    return run


def half_finished_batch(folder: ObjectStoragePath, emu: RunComfyEmulator) -> BatchRun:
    emu.set_config(queue_seconds=60, run_seconds=0)  # the submitted half stays queued
    run = open_run(folder, emu, max_in_flight=N // 2)
    start(run)
    assert asyncio.run(refill(run, emu)) == N // 2
    return run


def damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "removed":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "cut_at_line":
        lines = blob.splitlines(keepends=True)
        path.write_bytes(b"".join(lines[: max(0, len(lines) // 2 if len(lines) > 1 else 0)]))
    else:
        path.write_bytes(blob[: max(1, len(blob) // 2)])


def ledger_files(folder: ObjectStoragePath) -> list[Path]:
    return sorted(p for p in Path(folder.path, L.LEDGER_DIR).iterdir() if p.is_file())


def snapshot(folder: ObjectStoragePath) -> dict[str, tuple[str, str | None]]:
    return {r.key: (r.state, r.request_id) for r in L.Ledger(folder, MODEL).load()}


def accepted_submits(emu: RunComfyEmulator) -> int:
    return sum(1 for e in emu.journal.of("submit") if e.status_code == 200)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("stage", ["finished", "half_finished"])
def test_every_damaged_ledger_file_is_named_or_harmless_and_nothing_is_paid_twice(
    emu: RunComfyEmulator, tmp_path: Path, stage: str, how: str
) -> None:
    build = finished_batch if stage == "finished" else half_finished_batch
    folder = ObjectStoragePath(f"file://{tmp_path / 'batch'}")
    build(folder, emu)
    before = snapshot(folder)
    paid = {rid for _, rid in before.values() if rid}
    kept = sorted(Path(folder.path, "outputs").glob("*")) if stage == "finished" else []
    files = ledger_files(folder)
    assert {p.name for p in files} >= {L.HEAD, L.OWNER}
    pristine = {p: p.read_bytes() for p in files}

    for path in files:
        for extra in set(ledger_files(folder)) - set(pristine):  # one damaged file at a time
            extra.unlink()
        for p, blob in pristine.items():
            p.write_bytes(blob)
        damage(path, how)
        submits = accepted_submits(emu)
        damaged: L.LedgerDamagedError | None = None
        try:
            run = open_run(folder, emu, max_in_flight=N)
        except L.LedgerDamagedError as error:
            damaged = error
        if damaged is not None:
            named = path.name.split("-")[1] if path.name.startswith("seg-") else path.name
            assert named in damaged.path, (path.name, how, damaged)
            assert "on_damaged_ledger='reconcile'" in str(damaged)
            assert accepted_submits(emu) == submits
        else:
            # The one file whose damage loses nothing: a new execution writes its own owner record.
            assert path.name == L.OWNER, f"{path.name} {how} was read as an intact ledger"
            assert snapshot(folder) == before
            run.start_try(2, f"clear-{how}")
            asyncio.run(refill(run, emu))
            again = [e for e in emu.journal.of("submit")[submits:] if e.status_code == 200]
            # Nothing already paid is paid again; a half-finished batch goes on with its never-sent half.
            assert len(again) == (0 if stage == "finished" else N - len(paid))
        assert all(p.exists() for p in kept)


def test_a_finished_batch_with_an_emptied_checkpoint_reconciles_from_its_manifest_without_paying(
    emu: RunComfyEmulator, tmp_path: Path
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    first = finished_batch(folder, emu)
    damage(Path(folder.path, L.LEDGER_DIR, L.CHECKPOINT), "emptied")
    with pytest.raises(L.LedgerDamagedError, match="checkpoint.jsonl is empty"):
        open_run(folder, emu)

    report = reconcile(folder, MODEL, first.items)
    assert (report.succeeded, report.unknown) == (N, 0)
    run = open_run(folder, emu)
    submits = accepted_submits(emu)
    run.start_try(2, "after-reconcile")
    assert asyncio.run(refill(run, emu)) == 0
    assert accepted_submits(emu) == submits
    assert sorted(r.state for r in run.ledger) == [L.SUCCEEDED] * N
    assert list(Path(folder.path, L.LEDGER_DIR).glob(f"{L.DAMAGED_DIR}-*/{L.CHECKPOINT}"))


def test_a_half_finished_batch_reconciles_to_reattached_and_unknown_items(
    emu: RunComfyEmulator, tmp_path: Path
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    first = half_finished_batch(folder, emu)
    (first_segment, *_) = sorted(Path(folder.path, L.LEDGER_DIR).glob("seg-*"))
    damage(first_segment, "cut_mid_line")  # the 'ready' records of every item are half gone

    report = reconcile(folder, MODEL, first.items)
    run = open_run(folder, emu)
    assert report.reattached == N // 2  # their request ids were in the readable segments
    assert report.unknown + report.reattached == N
    submits = accepted_submits(emu)
    run.start_try(2, "after-reconcile")
    assert asyncio.run(refill(run, emu)) == 0  # nothing it cannot account for is paid
    assert accepted_submits(emu) == submits
    assert len(run.in_flight()) == N // 2


def test_a_damaged_checkpoint_reconciles_the_archived_items_as_succeeded(
    emu: RunComfyEmulator, tmp_path: Path
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    first = finished_batch(folder, emu)
    assert list(Path(folder.path, L.LEDGER_DIR).glob("done-*.jsonl"))  # the succeeded items' records
    Path(folder.path, "manifest.jsonl").unlink()  # only the archive can tell
    damage(Path(folder.path, L.LEDGER_DIR, L.CHECKPOINT), "emptied")
    submits = accepted_submits(emu)

    report = reconcile(folder, MODEL, first.items)
    run = open_run(folder, emu)
    run.start_try(2, "after-reconcile")

    assert report.succeeded == N
    assert asyncio.run(refill(run, emu)) == 0
    assert accepted_submits(emu) == submits


def test_a_store_that_forgets_with_the_process_is_refused_before_anything_is_paid() -> None:
    from airflow_provider_runcomfy.outputs.files import resolve_output_dir

    folder = resolve_output_dir("memory://batches/run", probe=False)
    with pytest.raises(L.LedgerNotDurableError, match="kept in memory only"):
        L.check_durable(folder)


def test_the_intent_is_on_disk_before_the_submit(
    emu: RunComfyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of the file and of its folder before ``append`` returns (what survives a power cut)."""
    import os

    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder = ObjectStoragePath(f"file://{tmp_path}")
    L.Ledger(folder, MODEL).append([{"key": "a.0", "index": 0, "state": L.INTENT}])
    ledger_dir = str(Path(folder.path, L.LEDGER_DIR))
    assert any(path.startswith(f"{ledger_dir}/seg-") for path in synced)  # the part file, before its rename
    assert ledger_dir in synced  # the folder, after the rename
