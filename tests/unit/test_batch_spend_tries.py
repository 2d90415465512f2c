"""Spend and inputs across tries: the budget sees everything the task instance paid, in every try.

An item submitted again keeps what its earlier attempts cost; items dropped from a rewritten
inputs file still count, and their queued jobs are cancelled (and said so) when a new try starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL

LOG = logging.getLogger("batch-spend")


def open_run(folder: ObjectStoragePath, inputs: list[dict[str, str]]) -> BatchRun:
    return BatchRun(
        MODEL,
        make_items(MODEL, inputs),
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=10,
        max_output_bytes=1 << 20,
        resubmit_unknown=False,
        log=LOG,
    )


def test_a_failed_item_submitted_again_keeps_its_first_cost_and_dropped_items_still_count(
    tmp_path: Path,
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    inputs = [{"prompt": f"item {n}", "image_url": "https://images.example.com/a.png"} for n in range(3)]
    run = open_run(folder, inputs)
    a, b, c = run.items
    run.ledger.append(
        [
            {
                "key": a.key,
                "index": 0,
                "state": L.FAILED,
                "request_id": "r-a",
                "outcome": {"status": "failed", "cost_usd": 0.1},
            },
            {
                "key": b.key,
                "index": 1,
                "state": L.SUCCEEDED,
                "request_id": "r-b",
                "outcome": {"status": "succeeded", "cost_usd": 0.2},
            },
            {
                "key": c.key,
                "index": 2,
                "state": L.SUCCEEDED,
                "request_id": "r-c",
                "outcome": {"status": "succeeded", "cost_usd": 0.05},
            },
        ]
    )
    assert run.spend().spent_usd == 0.35

    # A new try with item 2 gone from the inputs: item 0 is reset for a new submit.
    again = open_run(folder, inputs[:2])
    again.start_try(2, "try-2")
    assert again.ledger.get(a.key).state == L.READY  # type: ignore[union-attr]
    assert again.spend().spent_usd == 0.35  # 0.1 of the failed attempt, 0.05 of the dropped item
    assert open_run(folder, inputs[:2]).spend().spent_usd == 0.35  # and so after a reload


def test_queued_jobs_of_items_gone_from_the_inputs_are_cancelled_when_a_try_starts(
    queued_emu: RunComfyEmulator, tmp_path: Path
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    inputs = [{"prompt": f"item {n}", "image_url": queued_emu.sample_url()} for n in range(4)]
    run = open_run(folder, inputs)
    with RunComfyClient(queued_emu.token, base_url=queued_emu.base_url) as client:
        ids = [client.submit(MODEL, item.input).request_id for item in run.items]
    run.ledger.append(
        [
            {
                "key": i.key,
                "index": i.index,
                "state": L.SUBMITTED,
                "request_id": r,
                "submitted_at": time.time(),
            }
            for i, r in zip(run.items, ids, strict=True)
        ]
    )

    later = open_run(folder, inputs[:2])  # the inputs file lost items 2 and 3
    assert sorted(str(r.request_id) for r in later.vanished_in_flight()) == sorted(ids[2:])

    async def cancel() -> None:
        async with AsyncRunComfyClient(queued_emu.token, base_url=queued_emu.base_url) as client:
            await later.cancel_vanished(client)

    asyncio.run(cancel())
    assert sorted(e.request_id for e in queued_emu.journal.of("cancel")) == sorted(ids[2:])
    states = {r.request_id: r.state for r in L.Ledger(folder, MODEL).load()}
    assert [states[r] for r in ids] == [L.SUBMITTED, L.SUBMITTED, L.CANCELLED, L.CANCELLED]
