"""``RunComfyBatchTrigger`` in an event loop against the emulator: its wait, and its on_kill guard.

The guard is the one ``RunComfyRequestTrigger`` has (``triggers._guard``): the batch's
queued jobs are cancelled only when a user finished the task (or its state cannot be
read), never for a trigger that moved or a cleared task whose next try re-attaches.
Only the triggerer's task-state channel is stood in for (``task_states``). The guard's own
cases (a state that cannot be read, Airflow re-cancelling ``on_kill``) are tested once, on the
shared code, in ``test_trigger``; here, that the batch trigger is wired to it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from airflow.sdk.execution_time import task_runner
from task_states import TaskInstance, install

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL
from airflow_provider_runcomfy.triggers.batch import RunComfyBatchTrigger


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> RunComfyClient:
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    return RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url)


def window_of(client: RunComfyClient, emu: RunComfyEmulator, n: int) -> list[list[Any]]:
    ids = [
        client.submit(MODEL, {"prompt": f"p{i}", "image_url": emu.sample_url()}).request_id for i in range(n)
    ]
    return [[request_id, f"key.{i}", time.time()] for i, request_id in enumerate(ids)]


def killed(
    window: list[list[Any]], state: str | None, monkeypatch: pytest.MonkeyPatch
) -> RunComfyBatchTrigger:
    install(state, monkeypatch)
    trigger = RunComfyBatchTrigger(MODEL, window, poll_interval=0.1)
    trigger.task_instance = TaskInstance(task_id="batch")
    return trigger


def statuses(client: RunComfyClient, window: list[list[Any]]) -> list[str]:
    return [client.get_status(str(entry[0])).status.value for entry in window]


async def test_the_wait_fires_one_event_with_the_outcomes(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    window = window_of(client, runcomfy_emulator, 2)
    trigger = RunComfyBatchTrigger(MODEL, window, poll_interval=0.05, wake_count=2, deadline=time.time() + 10)
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1
    assert sorted(o["key"] for o in events[0]["outcomes"]) == ["key.0", "key.1"]
    assert RunComfyBatchTrigger(*trigger.serialize()[1].values()).serialize() == trigger.serialize()


@pytest.mark.parametrize(
    ("state", "cancelled"),
    [
        ("failed", 3),  # a user marked the task failed or success: nobody waits for the jobs
        ("success", 3),
        ("deferred", 0),  # the trigger only moved to another triggerer
        ("scheduled", 0),  # cleared: the next try re-attaches to these jobs
        ("queued", 0),
        ("up_for_retry", 0),
        (None, 0),
    ],
)
async def test_on_kill_cancels_only_for_a_finished_task(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    state: str | None,
    cancelled: int,
) -> None:
    runcomfy_emulator.set_config(queue_seconds=30)
    window = window_of(client, runcomfy_emulator, 3)
    await killed(window, state, monkeypatch).on_kill()
    assert runcomfy_emulator.journal.count("cancel") == cancelled
    assert statuses(client, window).count("cancelled") == cancelled


async def test_on_kill_counts_running_jobs_as_billed(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=30)
    window = window_of(client, runcomfy_emulator, 2)
    await killed(window, "failed", monkeypatch).on_kill()
    assert "0 cancelled (not billed), 2 already running or finished" in capsys.readouterr().out


@pytest.mark.parametrize(("cancel_on_kill", "window_size"), [(False, 2), (True, 0)])
async def test_on_kill_without_cancel_on_kill_or_jobs_asks_nothing(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    cancel_on_kill: bool,
    window_size: int,
) -> None:
    runcomfy_emulator.set_config(queue_seconds=30)
    trigger = killed(window_of(client, runcomfy_emulator, window_size), "failed", monkeypatch)
    trigger.cancel_on_kill = cancel_on_kill
    await trigger.on_kill()
    assert runcomfy_emulator.journal.count("cancel") == 0
    assert task_runner.SUPERVISOR_COMMS.asked == []  # type: ignore[attr-defined]
