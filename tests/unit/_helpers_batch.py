"""What the batch tests build again and again: a worker part's view of a batch, its ledger read back.

``open_batch`` is ``BatchRun`` as the worker opens it (the ledger loaded from ``folder``),
``ready`` records every item as ready to submit, ``refill`` submits what the window allows
to the emulator, as the worker's refill does, and ``wait_all`` records the outcomes of every
job in flight once they ended. (``queued_emu`` and ``queued_client``,
for tests whose jobs must stay queued, are fixtures in ``conftest.py``.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import BatchItem, make_items
from airflow_provider_runcomfy.batch.pacing import SubmitPacer
from airflow_provider_runcomfy.batch.submitting import BatchSpend
from airflow_provider_runcomfy.batch.window import WakeRule, Window
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy
from airflow_provider_runcomfy.emulator import RunComfyEmulator

LOG = logging.getLogger("batch-tests")


def open_batch(
    model_id: str,
    folder: Path | ObjectStoragePath,
    inputs: Sequence[dict[str, Any]],
    *,
    max_in_flight: int = 10,
    resubmit_unknown: bool = False,
) -> BatchRun:
    """The batch of ``inputs`` over the ledger in ``folder`` (a local path or ``file://`` URI)."""
    path = folder if isinstance(folder, ObjectStoragePath) else ObjectStoragePath(f"file://{folder}")
    return BatchRun(
        model_id,
        make_items(model_id, list(inputs)),
        L.Ledger(path, model_id).load(),
        path,
        max_in_flight=max_in_flight,
        max_output_bytes=1 << 20,
        resubmit_unknown=resubmit_unknown,
        log=LOG,
    )


def ready(run: BatchRun) -> BatchRun:
    """Every item recorded as ready to submit, as the worker does before its first refill."""
    run.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in run.items])
    return run


async def refill(run: BatchRun, emu: RunComfyEmulator, pacer: SubmitPacer | None = None) -> int:
    """One refill against the emulator, every input sent as given; how many jobs it accepted."""

    def prepare(items: Sequence[BatchItem]) -> list[Any]:
        return [item.input for item in items]

    def may_submit(item: BatchItem, spend: BatchSpend) -> bool:
        return True

    async with AsyncRunComfyClient(
        emu.token, base_url=emu.base_url, retry=RetryPolicy(max_attempts=1)
    ) as client:
        result = await run.refill(
            client,
            pacer or SubmitPacer(),
            prepare=prepare,
            validate=lambda model_id, payload: payload,
            may_submit=may_submit,
            try_number=1,
        )
    return result.submitted


async def wait_all(run: BatchRun, emu: RunComfyEmulator) -> None:
    """Wait (the trigger's loop, polling fast) for every job in flight, and record the outcomes."""
    async with AsyncRunComfyClient(emu.token, base_url=emu.base_url) as client:
        window = Window(
            run.in_flight(),
            model_id=run.model_id,
            poll_interval=0.05,
            rule=WakeRule(len(run.in_flight()), 30.0),
            deadline=time.time() + 30,
        )
        event = await window.wait(client)
    assert event["status"] == "ready", event
    run.apply_outcomes(event["outcomes"])
