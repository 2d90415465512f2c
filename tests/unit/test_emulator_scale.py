"""The emulator keeps up with a 10,000-item batch: per-request work does not grow with the job count.

No timings here (speed belongs in bench/): the tests count the work a
status poll does and check the queue index against the plain definition
of a queue position.
"""

from __future__ import annotations

import random

import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.emulator.queue import QueueIndex
from airflow_provider_runcomfy.emulator.state import Job

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def test_a_status_poll_looks_at_a_few_jobs_however_many_are_queued(emu, api, mocker):
    emu.set_config(queue_seconds=3600)
    ids = [
        api.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": "https://example.com/x.png"}).json()[
            "request_id"
        ]
        for _ in range(1500)
    ]
    phase = mocker.spy(Job, "phase")

    answer = api.get(f"/v1/requests/{ids[-1]}/status").json()

    assert answer["queue_position"] == 1499
    assert phase.call_count <= 3  # was one per job ahead in the queue: O(n) a poll, O(n^2) a batch


def naive_positions(jobs: list[tuple[float, float, bool]], now: float) -> list[int]:
    """Queue positions by definition: queued jobs submitted earlier. ``jobs``: (created, leaves, removed)."""
    queued = [not removed and now < leaves for _, leaves, removed in jobs]
    return [sum(queued[:i]) for i in range(len(jobs))]


@pytest.mark.parametrize("seed", range(5))
def test_the_queue_index_agrees_with_the_definition(seed):
    rng = random.Random(seed)
    index, jobs, now = QueueIndex(), [], 0.0
    for _ in range(300):
        now += rng.choice([0, 0, 0.5, 1, 3])
        action = rng.random()
        if action < 0.6:
            leaves = now + rng.choice([0, 1, 5, 20])
            assert index.add(leaves) == len(jobs)
            jobs.append((now, leaves, False))
        elif action < 0.8 and jobs:
            victim = rng.randrange(len(jobs))
            index.remove(victim)
            jobs[victim] = (*jobs[victim][:2], True)
        expected = naive_positions(jobs, now)
        assert [index.ahead(i, now) for i in range(len(jobs))] == expected


def test_queue_positions_survive_cancels_expiry_and_a_clock_that_goes_back():
    clock = [1_000.0]
    with RunComfyEmulator(queue_seconds=10, run_seconds=5) as emulator:
        emulator.state.clock = lambda: clock[0]
        import httpx

        headers = {"Authorization": f"Bearer {emulator.token}"}
        with httpx.Client(base_url=emulator.base_url, headers=headers) as api:

            def submit() -> str:
                body = {"prompt": "p", "image_url": "https://example.com/x.png"}
                return api.post(f"/v1/models/{FLUX}", json=body).json()["request_id"]

            def position(request_id: str) -> int | None:
                return api.get(f"/v1/requests/{request_id}/status").json().get("queue_position")

            a, b = submit(), submit()
            clock[0] += 5
            c, d = submit(), submit()
            assert [position(x) for x in (a, b, c, d)] == [0, 1, 2, 3]
            api.post(f"/v1/requests/{b}/cancel")
            emulator.expire(c)
            assert position(d) == 1  # only a is ahead
            clock[0] += 6  # a has left the queue
            assert [position(a), position(d)] == [None, 0]
            clock[0] -= 6  # a fake clock may go back: positions follow it
            assert [position(a), position(d)] == [0, 1]


def test_peak_in_flight_counts_jobs_held_at_once(emu, api):
    body = {"prompt": "p", "image_url": "https://example.com/x.png"}
    emu.add_rule(prompt_contains="long", queue_seconds=30)
    for prompt in ("long 1", "long 2", "long 3"):
        api.post(f"/v1/models/{FLUX}", json={**body, "prompt": prompt})
    api.post(f"/v1/requests/{emu.jobs[0].request_id}/cancel")  # no longer held
    for _ in range(5):  # queue 0, run 0: finished as submitted, never held
        api.post(f"/v1/models/{FLUX}", json=body)
    emu.set_config(run_seconds=60)
    for _ in range(4):
        api.post(f"/v1/models/{FLUX}", json=body)

    assert emu.peak_in_flight() == 6  # long 2, long 3 and the four running ones
    assert emu.peak_in_flight(model_id="vendor/other") == 0
