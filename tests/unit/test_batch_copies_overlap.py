"""A batch's copies go on while its worker does other things, and are recorded once, by the worker.

Real jobs on the emulator over HTTP, a real ledger and real copies on a local disk (one event
loop copies there) and on S3 (a moto server; threads copy there, as uploads block). The
emulator answers every output file 1.5 s late (a ``delay`` fault on ``file``), so the copies
are still on their way when the worker looks: what a user must get is every output kept
once, recorded in the ledger only when it is whole, and nothing copied twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _helpers_batch import refill, wait_all
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.copies import LoopCopies, ThreadCopies
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items
from airflow_provider_runcomfy.batch.owner import Owner
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL
from airflow_provider_runcomfy.outputs.files import resolve_output_dir

if TYPE_CHECKING:
    from tests.s3_fixture import MotoS3

pytest_plugins = ["tests.s3_fixture"]

N = 5
#: How late the emulator answers each output file: far longer than the few steps between looks.
FILE_DELAY = 1.5


def open_run(folder: ObjectStoragePath, emu: RunComfyEmulator) -> BatchRun:
    inputs = [{"prompt": f"item {i}", "image_url": emu.sample_url()} for i in range(N)]
    return BatchRun(
        MODEL,
        make_items(MODEL, inputs),
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=N,
        max_output_bytes=1 << 22,
        resubmit_unknown=False,
        log=logging.getLogger("batch-copies"),
        api_base_url=emu.base_url,
        owner=Owner.take(folder / L.LEDGER_DIR),
    )


def finished_jobs(folder: ObjectStoragePath, emu: RunComfyEmulator) -> BatchRun:
    """N jobs that succeeded, their outputs not copied yet."""
    emu.set_config(queue_seconds=0, run_seconds=0)
    run = open_run(folder, emu)
    run.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in run.items])
    run.start_try(1, f"try-{time.time()}")
    assert asyncio.run(refill(run, emu)) == N
    asyncio.run(wait_all(run, emu))
    assert [r.state for r in run.ledger] == [L.FINISHED] * N
    return run


def test_a_local_folder_is_copied_to_on_one_loop_and_an_object_store_on_threads(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path, moto_s3: MotoS3
) -> None:
    moto_s3.bucket("outputs")
    local = open_run(ObjectStoragePath(f"file://{tmp_path}"), runcomfy_emulator)
    remote = open_run(resolve_output_dir("s3://outputs/task", probe=False), runcomfy_emulator)
    assert type(local._copies) is LoopCopies
    assert type(remote._copies) is ThreadCopies


def test_copies_to_an_object_store_go_on_in_the_background_too(
    runcomfy_emulator: RunComfyEmulator, moto_s3: MotoS3
) -> None:
    emu = runcomfy_emulator
    moto_s3.bucket("outputs")
    folder = resolve_output_dir("s3://outputs/task", probe=False)
    run = finished_jobs(folder, emu)
    emu.add_fault("file", "delay", times=None, seconds=FILE_DELAY)
    try:
        assert run.start_copies() == N
        assert run.copying() == N and run.record_copies(wait=False) == 0
        assert run.record_copies(wait=True) == N
    finally:
        run.close_copies()
    assert [r.state for r in run.ledger] == [L.SUCCEEDED] * N
    kept = [p for p in (folder / "outputs").iterdir() if not p.name.endswith(".part")]
    assert len(kept) == N and len(emu.journal.of("file")) == N


def kept_files(tmp_path: Path) -> list[Path]:
    """The files in ``outputs/``; a ``.part`` file left behind would be a copy cut short."""
    files = sorted((tmp_path / "outputs").iterdir())
    assert not [p for p in files if p.name.endswith(".part")]
    return files


def test_copies_go_on_in_the_background_and_are_recorded_once_whole(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    emu = runcomfy_emulator
    run = finished_jobs(ObjectStoragePath(f"file://{tmp_path}"), emu)
    emu.add_fault("file", "delay", times=None, seconds=FILE_DELAY)
    try:
        assert run.start_copies() == N
        # The worker is back at once: the copies are on their way, nothing is recorded as kept.
        assert run.copying() == N
        assert run.start_copies() == 0  # an item being copied is not started twice
        assert run.record_copies(wait=False) == 0
        assert [r.state for r in run.ledger] == [L.FINISHED] * N

        assert run.record_copies(wait=True) == N
        assert run.copying() == 0
        assert [r.state for r in run.ledger] == [L.SUCCEEDED] * N
    finally:
        run.close_copies()
    assert len(kept_files(tmp_path)) == N
    assert len(emu.journal.of("file")) == N  # each output fetched once


def test_copies_a_part_did_not_record_are_made_again_under_the_same_names(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    emu = runcomfy_emulator
    folder = ObjectStoragePath(f"file://{tmp_path}")
    run = finished_jobs(folder, emu)
    emu.add_fault("file", "delay", times=None, seconds=FILE_DELAY)
    run.start_copies()
    # The part ends (it is killed, or fails) with its copies under way: they finish or are
    # dropped, and none is recorded.
    run.close_copies()
    assert run.copying() == 0
    emu.clear_faults()

    later = open_run(folder, emu)  # the next worker part reads the ledger: the items are still to copy
    assert [r.state for r in later.ledger] == [L.FINISHED] * N
    assert later.store_outputs() == N
    later.close_copies()
    assert [r.state for r in later.ledger] == [L.SUCCEEDED] * N
    assert len(kept_files(tmp_path)) == N  # made again under the same names: one file per output
