"""Two executions of one batch task on one ledger: only the newest submits, and nothing is paid twice.

Real submits to the emulator, a real ledger on a local disk. The interleavings that matter
are staged exactly (no clock): the newer execution takes over before the older one's owner
check, or right after it (the older one then sends its one wave, which the newer one must
leave alone).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pytest
from _helpers_batch import refill
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items
from airflow_provider_runcomfy.batch.owner import Owner, OwnershipLost
from airflow_provider_runcomfy.batch.pacing import SubmitPacer
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL

N = 8
LOG = logging.getLogger("batch-owner")


def open_run(folder: ObjectStoragePath, emu: RunComfyEmulator, owner: Owner) -> BatchRun:
    items = make_items(MODEL, [{"prompt": f"item {i}", "image_url": emu.sample_url()} for i in range(N)])
    return BatchRun(
        MODEL,
        items,
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=N,
        max_output_bytes=1 << 20,
        resubmit_unknown=False,
        log=LOG,
        owner=owner,
    )


def paid_per_item(emu: RunComfyEmulator) -> Counter[str]:
    return Counter(e.json["prompt"] for e in emu.journal.of("submit") if e.status_code == 200)


@pytest.fixture
def folder(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}")


def test_an_older_execution_that_wakes_after_a_takeover_withdraws_its_wave_and_says_why(
    queued_emu: RunComfyEmulator, folder: ObjectStoragePath
) -> None:
    older = open_run(folder, queued_emu, Owner.take(folder / L.LEDGER_DIR, try_number=1))
    older.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in older.items])
    newer_owner = Owner.take(folder / L.LEDGER_DIR, try_number=1)  # the same try number

    with pytest.raises(OwnershipLost, match="another execution took it over"):
        asyncio.run(refill(older, queued_emu))
    assert queued_emu.journal.count("submit") == 0

    newer = open_run(folder, queued_emu, newer_owner)
    newer.start_try(1, "same-try")
    assert asyncio.run(refill(newer, queued_emu)) == N
    assert sorted(paid_per_item(queued_emu).values()) == [1] * N


def test_a_wave_sent_just_after_a_takeover_is_left_to_it_and_never_paid_twice(
    queued_emu: RunComfyEmulator, folder: ObjectStoragePath
) -> None:
    """The older execution passed its owner check, then the newer one took over and read the ledger."""
    holder: dict[str, BatchRun] = {}

    class CheckedThenTakenOver(Owner):
        def check(self) -> None:
            super().check()
            if "newer" not in holder:  # the newer execution starts right after this check
                holder["newer"] = open_run(folder, queued_emu, Owner.take(folder / L.LEDGER_DIR))

    older = open_run(folder, queued_emu, CheckedThenTakenOver.take(folder / L.LEDGER_DIR))
    older.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in older.items[: N // 2]])
    assert asyncio.run(refill(older, queued_emu)) == N // 2  # its one wave went out

    newer = holder["newer"]
    newer.ledger.append(
        [
            {"key": i.key, "index": i.index, "state": L.READY}
            for i in newer.items
            if newer.ledger.get(i.key) is None
        ]
    )
    newer.start_try(2, "new-try")
    assert len(newer.limbo()) == N // 2  # the older wave: maybe on the wire, never sent from here
    assert asyncio.run(refill(newer, queued_emu)) == N // 2  # only the items nobody intended

    # The next worker part of the newer execution reads the older one's request ids and watches them.
    again = open_run(folder, queued_emu, newer.owner)  # type: ignore[arg-type]
    assert not again.limbo()
    assert len(again.in_flight()) == N
    assert sorted(paid_per_item(queued_emu).values()) == [1] * N
    with pytest.raises(OwnershipLost):
        older.owner.check()  # type: ignore[union-attr]


def test_an_intent_from_a_dead_execution_becomes_unknown_after_the_grace(
    queued_emu: RunComfyEmulator, folder: ObjectStoragePath
) -> None:
    dead = Owner.take(folder / L.LEDGER_DIR)
    ledger = L.Ledger(folder, MODEL)
    items = make_items(
        MODEL, [{"prompt": f"item {i}", "image_url": queued_emu.sample_url()} for i in range(N)]
    )
    ledger.append(
        [
            {"key": i.key, "index": i.index, "state": L.INTENT, "owner": dead.id, "intent_at": 1.0}
            for i in items
        ]
    )
    run = open_run(folder, queued_emu, Owner.take(folder / L.LEDGER_DIR))
    run.start_try(2, "after-a-crash")
    assert not run.limbo()
    assert sorted(r.state for r in run.ledger) == [L.UNKNOWN] * N
    assert asyncio.run(refill(run, queued_emu, SubmitPacer(max_concurrency=N, concurrency=N))) == 0


def test_a_late_request_id_still_attaches_to_an_item_reported_unknown(folder: ObjectStoragePath) -> None:
    ledger = L.Ledger(folder, MODEL)
    ledger.append([{"key": "a.0", "index": 0, "state": L.INTENT, "owner": "old"}])
    ledger.append([{"key": "a.0", "state": L.UNKNOWN, "expect": {"state": [L.INTENT], "owner": "old"}}])
    late = {
        "key": "a.0",
        "state": L.SUBMITTED,
        "request_id": "r1",
        "expect": {"state": [L.INTENT, L.UNKNOWN], "owner": "old"},
    }
    ledger.append([late])
    # A withdrawal by someone who no longer owns the intent does nothing.
    ledger.append([{"key": "a.0", "state": L.READY, "expect": {"state": [L.INTENT], "owner": "old"}}])
    record = L.Ledger(folder, MODEL).load().items["a.0"]
    assert (record.state, record.request_id) == (L.SUBMITTED, "r1")
