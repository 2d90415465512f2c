"""``batch.window.Window``: when the jobs in flight are read, and when the worker is woken.

The loop runs for real against the emulator over HTTP (the trigger and the blocking
mode run exactly this); every wait is bounded by a deadline, ``max_wait`` or ``wake_at``
of a fraction of a second, so a test that goes wrong ends instead of hanging.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from airflow_provider_runcomfy.batch.progress import Progress
from airflow_provider_runcomfy.batch.window import ERROR, READY, TIMEOUT, WakeRule, Window
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL

#: How long any test's wait may last before its own bound ends it.
BOUND = 5.0


@pytest.fixture
async def client(emu: RunComfyEmulator) -> AsyncIterator[AsyncRunComfyClient]:
    async with AsyncRunComfyClient(emu.token, base_url=emu.base_url) as async_client:
        yield async_client


def submit(emu: RunComfyEmulator, n: int, **timings: float) -> list[list[object]]:
    """Submit ``n`` jobs (with the emulator's timings at that moment); their window entries."""
    if timings:
        emu.set_config(**timings)
    with RunComfyClient(emu.token, base_url=emu.base_url) as sync:
        ids = [
            sync.submit(MODEL, {"prompt": f"p{i}", "image_url": emu.sample_url()}).request_id
            for i in range(n)
        ]
    now = time.time()
    return [[request_id, f"key.{request_id[:6]}", now] for request_id in ids]


def window(entries: list[list[object]], rule: WakeRule, **options: object) -> Window:
    options.setdefault("deadline", time.time() + BOUND)
    return Window(entries, model_id=MODEL, poll_interval=0.05, rule=rule, **options)  # type: ignore[arg-type]


# -- reading each job at the right time -----------------------------------------------------------


def test_a_job_is_first_read_when_it_is_expected_to_be_done() -> None:
    submitted = time.time()
    entries = [["r1", "k1", submitted], ["r2", "k2", submitted - 100]]
    watched = window(entries, WakeRule(1, 30.0), expected_seconds=60.0)
    assert watched.due_within(0) == 1  # r2: submitted 100 s ago, expected after 60 s
    assert watched.due_within(120) == 2
    # Not known yet how long jobs take: the first read is one poll interval after the submit.
    unknown = Window(entries, model_id=MODEL, poll_interval=50.0, rule=WakeRule(1, 30.0))
    assert (unknown.due_within(0), unknown.due_within(60)) == (1, 2)


def test_the_expected_wake_is_when_the_wake_count_th_job_is_due() -> None:
    now = time.time()
    entries = [["r1", "k1", now - 9], ["r2", "k2", now - 5], ["r3", "k3", now]]  # due in 1, 5, 10 s
    assert window(entries, WakeRule(1, 30.0), expected_seconds=10.0).expected_wake(now) == pytest.approx(
        now + 1
    )
    assert window(entries, WakeRule(2, 30.0), expected_seconds=10.0).expected_wake(now) == pytest.approx(
        now + 5
    )
    # wake_at sooner than the jobs wins; a time already past is "now".
    rule = WakeRule(3, 30.0, wake_at=now + 2)
    assert window(entries, rule, expected_seconds=10.0).expected_wake(now) == pytest.approx(now + 2)
    late = [["r1", "k1", now - 60]]
    assert window(late, WakeRule(1, 30.0), expected_seconds=10.0).expected_wake(now) == now


def test_an_empty_window_is_expected_to_wake_at_its_clock_only() -> None:
    now = time.time()
    # A 429 pause of 30 s: nothing in flight, woken by wake_at (not "at once", which would hold the worker).
    assert window([], WakeRule(1, 30.0, wake_at=now + 30)).expected_wake(now) == pytest.approx(now + 30)
    assert window([], WakeRule(1, 30.0)).expected_wake(now) == now


async def test_finished_jobs_come_back_with_their_keys(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 3)
    event = await window(entries, WakeRule(3, 30.0)).wait(client)
    assert event["status"] == READY
    assert event["still_in_flight"] == 0
    assert sorted((o["request_id"], o["key"], o["status"]) for o in event["outcomes"]) == sorted(
        (str(e[0]), str(e[1]), "succeeded") for e in entries
    )
    # Lean: the batch knows its model; an outcome carries what the ledger keeps, no more.
    assert all(o["outputs"] and "model_id" not in o and "output" not in o for o in event["outcomes"])
    assert len(json.dumps(event)) < 3000  # a trigger event: URLs and counts, never files


async def test_each_finished_job_is_read_once(emu: RunComfyEmulator, client: AsyncRunComfyClient) -> None:
    entries = submit(emu, 4)
    await window(entries, WakeRule(4, 30.0)).wait(client)
    assert emu.journal.count("result") == 4
    assert emu.journal.count("status") == 0  # /result alone says both "waiting" and the outcome


async def test_a_result_not_yet_written_is_read_again(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 1)
    emu.add_fault("result", "not_written", times=1)
    event = await window(entries, WakeRule(1, 30.0)).wait(client)
    assert [o["status"] for o in event["outcomes"]] == ["succeeded"]
    assert emu.journal.count("result") == 2


async def test_an_expired_job_is_an_outcome_not_an_error(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 1)
    emu.expire(str(entries[0][0]))
    event = await window(entries, WakeRule(1, 30.0)).wait(client)
    assert event["status"] == READY
    (outcome,) = event["outcomes"]
    assert (outcome["status"], outcome["error_kind"]) == ("error", "RequestNotFoundError")


# -- when the worker is woken ---------------------------------------------------------------------


async def test_the_worker_is_not_woken_for_fewer_than_wake_count(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    """One of three finished, wake_count 2: the wait goes on until max_wait for the one that did."""
    entries = submit(emu, 1) + submit(emu, 2, queue_seconds=60)
    event = await window(entries, WakeRule(2, max_wait=0.3)).wait(client)
    assert event["status"] == READY
    assert [o["request_id"] for o in event["outcomes"]] == [entries[0][0]]
    assert event["still_in_flight"] == 2
    assert emu.journal.count("result") > 3  # the queued two were read again meanwhile


async def test_nothing_finished_by_the_deadline_is_a_timeout(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 2, queue_seconds=60)
    event = await window(entries, WakeRule(1, 30.0), deadline=time.time() + 0.3).wait(client)
    assert (event["status"], event["outcomes"], event["still_in_flight"]) == (TIMEOUT, [], 2)


async def test_jobs_due_within_the_workers_resume_time_count_as_finished(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    """Lead time: the worker takes a while to resume, so it is woken that long before jobs end."""
    entries = submit(emu, 2, queue_seconds=60)
    early = window(entries, WakeRule(2, 30.0, lead_seconds=120.0), expected_seconds=60.0)
    late = window(entries, WakeRule(2, 30.0), expected_seconds=60.0, deadline=time.time() + 0.3)
    assert (await early.wait(client))["status"] == READY
    assert (await late.wait(client))["status"] == TIMEOUT
    assert emu.journal.count("result") == 0  # nothing was due to be read in either


async def test_a_paused_refill_wakes_at_wake_at(emu: RunComfyEmulator, client: AsyncRunComfyClient) -> None:
    entries = submit(emu, 1, queue_seconds=60)
    event = await window(entries, WakeRule(1, 30.0, wake_at=time.time() + 0.2)).wait(client)
    assert (event["status"], event["still_in_flight"]) == (READY, 1)


async def test_an_empty_window_wakes_at_once(client: AsyncRunComfyClient) -> None:
    event = await window([], WakeRule(1, 30.0)).wait(client)
    assert (event["status"], event["outcomes"], event["still_in_flight"]) == (READY, [], 0)


async def test_an_unreadable_runcomfy_ends_the_wait_with_an_error(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 2)
    emu.add_fault("result", "http", times=None, status=401, error_code=401001, error_message="bad token")
    event = await window(entries, WakeRule(1, 30.0)).wait(client)
    assert event["status"] == ERROR
    assert event["error_kind"] == "AuthenticationError"
    assert event["retryable"] is False
    assert event["still_in_flight"] == 2  # nothing is concluded about the jobs
    assert event["outcomes"] == []


async def test_a_transient_read_error_is_tolerated(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    entries = submit(emu, 1)
    emu.add_fault("result", "http", times=2, status=503)
    event = await window(entries, WakeRule(1, 30.0)).wait(client)
    assert [o["status"] for o in event["outcomes"]] == ["succeeded"]


# -- on arrival, and the progress line ------------------------------------------------------------


async def test_poll_due_reads_only_jobs_due_now(emu: RunComfyEmulator, client: AsyncRunComfyClient) -> None:
    done, queued = submit(emu, 1), submit(emu, 1, queue_seconds=60)
    queued[0][2] = time.time() + 100  # not due for a while
    watched = window(done + queued, WakeRule(1, 30.0), expected_seconds=0.0)
    outcomes = await watched.poll_due(client)
    assert [o["request_id"] for o in outcomes] == [done[0][0]]
    assert emu.journal.count("result") == 1


async def test_finished_jobs_count_towards_the_progress_line(
    emu: RunComfyEmulator, client: AsyncRunComfyClient
) -> None:
    progress = Progress(total=10, done=4)
    lines: list[str] = []
    watched = window(submit(emu, 2), WakeRule(2, 30.0), progress=progress, log_line=lines.append)
    await watched.wait(client)
    assert progress.done == 6
    assert lines and lines[0].startswith("Batch progress: ")
