"""One job and each job of a batch give up after the same failed polls in a row (``policy``).

Both waits run for real against the emulator; the clients retry nothing themselves
(``max_attempts=1``), so each injected 503 is exactly one failed poll. Before the policy
was merged the batch tolerated 4 failed polls and one job 3.
"""

from __future__ import annotations

import time

import pytest

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.batch.window import ERROR, READY, WakeRule, Window
from airflow_provider_runcomfy.client import (
    AsyncRunComfyClient,
    RequestState,
    RetryPolicy,
    RunComfyClient,
    ServerError,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL

NO_RETRY = RetryPolicy(max_attempts=1)
TOLERATED = policy.MAX_CONSECUTIVE_POLL_ERRORS
#: How long any wait here may last before its own deadline ends it.
BOUND = 10.0


def _submit(emu: RunComfyEmulator) -> str:
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        return client.submit(MODEL, {"prompt": "p", "image_url": emu.sample_url()}).request_id


@pytest.mark.parametrize(("failures", "ends_well"), [(TOLERATED, True), (TOLERATED + 1, False)])
def test_one_job_tolerates_the_policys_failed_polls_in_a_row(
    emu: RunComfyEmulator, failures: int, ends_well: bool
) -> None:
    request_id = _submit(emu)
    emu.add_fault("status", "http", times=failures, status=503)
    with RunComfyClient(emu.token, base_url=emu.base_url, retry=NO_RETRY) as client:
        if ends_well:
            result = client.wait_for_result(request_id, poll_interval=0.05, deadline=time.time() + BOUND)
            assert result.status is RequestState.SUCCEEDED
        else:
            with pytest.raises(ServerError):
                client.wait_for_result(request_id, poll_interval=0.05, deadline=time.time() + BOUND)


@pytest.mark.parametrize(("failures", "ends_well"), [(TOLERATED, True), (TOLERATED + 1, False)])
async def test_each_job_of_a_batch_tolerates_the_same_failed_polls_in_a_row(
    emu: RunComfyEmulator, failures: int, ends_well: bool
) -> None:
    request_id = _submit(emu)
    emu.add_fault("result", "http", times=failures, status=503)
    entries: list[list[object]] = [[request_id, "key.1", time.time()]]
    watched = Window(
        entries, model_id=MODEL, poll_interval=0.05, rule=WakeRule(1, 30.0), deadline=time.time() + BOUND
    )
    async with AsyncRunComfyClient(emu.token, base_url=emu.base_url, retry=NO_RETRY) as client:
        event = await watched.wait(client)
    if ends_well:
        assert event["status"] == READY
        assert [o["status"] for o in event["outcomes"]] == ["succeeded"]
    else:
        assert event["status"] == ERROR and event["retryable"] is True
        assert event["still_in_flight"] == 1


def test_the_defer_backstop_outlasts_a_read_made_at_the_deadline() -> None:
    """``defer(timeout=deadline + margin)``: a read at the deadline may retry for ``max_total`` first."""
    from airflow_provider_runcomfy.operators._wait import DEFER_TIMEOUT_MARGIN as ONE_JOB
    from airflow_provider_runcomfy.operators.batch import DEFER_TIMEOUT_MARGIN as BATCH

    assert ONE_JOB == BATCH == policy.DEFER_TIMEOUT_MARGIN
    assert policy.DEFER_TIMEOUT_MARGIN.total_seconds() >= RetryPolicy().max_total
