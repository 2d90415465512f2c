"""``BatchRun.refill`` against the emulator: 429s slow the batch down and never cost a second job.

A real ledger in a local folder, real submits over HTTP; the client does not retry on its
own (one attempt), so every 429 reaches the batch's pacer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _helpers_batch import open_batch, ready
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import BatchItem
from airflow_provider_runcomfy.batch.pacing import SubmitPacer
from airflow_provider_runcomfy.batch.submitting import BatchSpend, RefillResult
from airflow_provider_runcomfy.client import AsyncRunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL


def batch(tmp_path: Path, queued_emu: RunComfyEmulator, n: int, max_in_flight: int = 100) -> BatchRun:
    inputs = [{"prompt": f"p{i}", "image_url": queued_emu.sample_url()} for i in range(n)]
    return ready(open_batch(MODEL, tmp_path, inputs, max_in_flight=max_in_flight))


async def refill(run: BatchRun, client: AsyncRunComfyClient, pacer: SubmitPacer) -> RefillResult:
    def prepare(items: Sequence[BatchItem]) -> list[Any]:
        return [item.input for item in items]

    def validate(model_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def may_submit(item: BatchItem, spend: BatchSpend) -> bool:
        return True

    return await run.refill(
        client, pacer, prepare=prepare, validate=validate, may_submit=may_submit, try_number=1
    )


def states(tmp_path: Path) -> list[str]:
    """The items' states as a new worker part reads them back from the ledger."""
    ledger = L.Ledger(ObjectStoragePath(f"file://{tmp_path}"), MODEL).load()
    return sorted(record.state for record in ledger)


async def test_refused_submits_are_submitted_again_and_billed_once(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    run = batch(tmp_path, queued_emu, 6)
    queued_emu.add_fault("submit", "http", times=3, status=429, retry_after=0)
    pacer = SubmitPacer()
    result = await refill(run, queued_client, pacer)

    assert (result.submitted, result.refused, result.stopped, result.fatal) == (6, 3, None, None)
    assert pacer.refusals == 3
    assert len(queued_emu.jobs) == 6  # one job per item: a 429 created none
    assert states(tmp_path) == [L.SUBMITTED] * 6
    request_ids = [record.request_id for record in run.ledger]
    assert len(set(request_ids)) == 6 and None not in request_ids


async def test_a_429_slows_the_refill_down(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    run = batch(tmp_path, queued_emu, 4)
    queued_emu.add_fault("submit", "http", times=1, status=429, retry_after=0)
    pacer = SubmitPacer(max_concurrency=8)
    await refill(run, queued_client, pacer)
    assert pacer.concurrency == 4
    assert pacer.gap > 0


async def test_a_long_retry_after_ends_the_refill_instead_of_holding_the_worker(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    """The worker gives its slot back and the trigger wakes it at ``paused_until``."""
    run = batch(tmp_path, queued_emu, 5)
    queued_emu.add_fault("submit", "http", times=None, status=429, retry_after=45)
    result = await refill(run, queued_client, SubmitPacer(max_concurrency=2))

    assert result.submitted == 0
    assert result.paused_until is not None
    assert len(queued_emu.jobs) == 0
    assert states(tmp_path) == [L.READY] * 5  # refused: nothing exists, so they stay ready


async def test_the_refill_stops_at_max_in_flight(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    run = batch(tmp_path, queued_emu, 7, max_in_flight=3)
    result = await refill(run, queued_client, SubmitPacer())
    assert result.submitted == 3
    assert sorted(states(tmp_path)) == [L.READY] * 4 + [L.SUBMITTED] * 3
    assert (await refill(run, queued_client, SubmitPacer())).submitted == 0  # the window is full


async def test_a_lost_answer_is_unknown_and_never_paid_again(
    tmp_path: Path, queued_emu: RunComfyEmulator, queued_client: AsyncRunComfyClient
) -> None:
    """The emulator creates the job, then answers with half a JSON body: was it created? Unknown."""
    run = batch(tmp_path, queued_emu, 2)
    queued_emu.add_fault("submit", "bad_body", times=1)
    result = await refill(run, queued_client, SubmitPacer(max_concurrency=1))

    assert result.submitted == 1
    assert len(queued_emu.jobs) == 2  # both were created (and billed)
    assert states(tmp_path) == [L.SUBMITTED, L.UNKNOWN]
    assert (await refill(run, queued_client, SubmitPacer())).submitted == 0
    assert len(queued_emu.jobs) == 2
