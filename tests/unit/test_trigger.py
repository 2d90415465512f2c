"""RunComfyRequestTrigger driven directly in an event loop, against the emulator over real HTTP.

Only the triggerer's task-state channel (Airflow's supervisor comms) is faked,
in the on_kill tests: it is the one thing no emulator can stand in for.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from airflow.sdk.execution_time import task_runner
from task_states import TaskInstance, install, kill_while_airflow_recancels

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> RunComfyClient:
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    conn["extra"] = {"max_retries": 0}  # type: ignore[assignment]
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    return RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url)


def submit(client: RunComfyClient, emu: RunComfyEmulator, prompt: str = "p") -> str:
    return client.submit(FLUX_KONTEXT_PRO_EDIT, {"prompt": prompt, "image_url": emu.sample_url()}).request_id


@pytest.fixture
def queued_job(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> str:
    """A job that waits in RunComfy's queue for 30 s: cancelled there, it costs nothing."""
    runcomfy_emulator.set_config(queue_seconds=30)
    return submit(client, runcomfy_emulator)


@pytest.fixture
def running_job(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> str:
    """A job that starts at once and runs for 30 s: RunComfy will finish and bill it, whatever we do."""
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=30)
    return submit(client, runcomfy_emulator)


async def only_event(trigger: RunComfyRequestTrigger) -> dict[str, Any]:
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1
    return events[0]


async def test_succeeded_event_carries_everything_the_task_needs(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = submit(client, runcomfy_emulator)
    event = await only_event(
        RunComfyRequestTrigger(request_id, poll_interval=0.1, model_id=FLUX_KONTEXT_PRO_EDIT)
    )
    assert event["status"] == "succeeded"
    assert event["request_id"] == request_id
    assert event["model_id"] == FLUX_KONTEXT_PRO_EDIT
    assert event["outputs"] == [event["output"]["image"]]
    assert event["finished_at"]
    assert len(json.dumps(event)) < 2000  # small: URLs, never files


async def test_failed_event_carries_runcomfys_message(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="nsfw", fail_message="NSFW content detected")
    event = await only_event(
        RunComfyRequestTrigger(submit(client, runcomfy_emulator, "nsfw"), poll_interval=0.1)
    )
    assert event["status"] == "failed"
    assert event["message"].endswith("failed: NSFW content detected")


async def test_cancelled_event(client: RunComfyClient, queued_job: str) -> None:
    client.cancel(queued_job)
    event = await only_event(RunComfyRequestTrigger(queued_job, poll_interval=0.1))
    assert event["status"] == "cancelled"


async def test_timeout_event_at_the_wall_clock_deadline(queued_job: str) -> None:
    started = time.monotonic()
    event = await only_event(
        RunComfyRequestTrigger(queued_job, poll_interval=0.2, deadline=time.time() + 0.6)
    )
    assert event["status"] == "timeout"
    assert time.monotonic() - started < 2.0


async def test_a_deadline_already_past_after_a_restart_is_not_reset(queued_job: str) -> None:
    _, kwargs = RunComfyRequestTrigger(queued_job, poll_interval=5, deadline=time.time() - 1).serialize()
    started = time.monotonic()
    event = await only_event(RunComfyRequestTrigger(**kwargs))  # what a restarted triggerer builds
    assert event["status"] == "timeout"
    assert time.monotonic() - started < 1.0  # one poll, no wait for poll_interval


async def test_transient_5xx_and_429_are_tolerated(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = submit(client, runcomfy_emulator)
    runcomfy_emulator.add_fault("status", "http", times=2, status=502)
    runcomfy_emulator.add_fault("status", "http", times=1, status=429, retry_after=0)
    event = await only_event(RunComfyRequestTrigger(request_id, poll_interval=0.1))
    assert event["status"] == "succeeded"


async def test_too_many_failures_in_a_row_end_in_an_error_event(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = submit(client, runcomfy_emulator)
    runcomfy_emulator.add_fault("status", "http", times=10, status=503)
    event = await only_event(RunComfyRequestTrigger(request_id, poll_interval=0.05, max_consecutive_errors=2))
    assert event["status"] == "error"
    assert event["error_kind"] == "ServerError"
    assert runcomfy_emulator.journal.count("status") == 3


async def test_a_permanent_error_ends_the_wait_at_once(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    event = await only_event(RunComfyRequestTrigger("never-submitted", poll_interval=0.05))
    assert event["status"] == "error"
    assert event["error_kind"] == "RequestNotFoundError"
    assert runcomfy_emulator.journal.count("status") == 1


# -- on_kill and the moved-trigger guard ------------------------------------------------------------


def killed_trigger(request_id: str, state: str | None, monkeypatch: pytest.MonkeyPatch, map_index: int = -1):
    comms = install(state, monkeypatch)
    trigger = RunComfyRequestTrigger(request_id, poll_interval=0.1)
    trigger.task_instance = TaskInstance(map_index=map_index)
    return trigger, comms


@pytest.mark.parametrize(
    ("state", "cancels"),
    [
        ("failed", True),  # a user marked the task failed or success (or its upstream failed)
        ("success", True),
        ("upstream_failed", True),
        ("deferred", False),  # still deferred: the trigger only moved (Airflow 3.3.2)
        (None, False),
        ("scheduled", False),  # cleared: the next try re-attaches to the job
        ("queued", False),
        ("up_for_retry", False),
    ],
)
async def test_on_kill_cancels_a_queued_job_only_when_a_user_acted_on_the_task(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    queued_job: str,
    state: str | None,
    cancels: bool,
) -> None:
    trigger, comms = killed_trigger(queued_job, state, monkeypatch)
    await trigger.on_kill()
    cancelled = [entry.request_id for entry in runcomfy_emulator.journal.of("cancel")]
    assert cancelled == ([queued_job] if cancels else [])
    assert client.get_status(queued_job).status.value == ("cancelled" if cancels else "in_queue")
    assert comms.asked[0].dag_id == "d"


async def test_on_kill_cancels_when_the_task_state_cannot_be_read(
    client: RunComfyClient, queued_job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)  # no channel at all
    trigger = RunComfyRequestTrigger(queued_job)
    trigger.task_instance = TaskInstance()
    await trigger.on_kill()
    assert client.get_result(queued_job).status.value == "cancelled"


async def test_on_kill_finishes_its_cancel_although_airflow_keeps_cancelling_it(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    queued_job: str,
) -> None:
    """Airflow 3.3.2 re-cancels a trigger's task until it reports finished, also during on_kill."""
    trigger, comms = killed_trigger(queued_job, "failed", monkeypatch)
    comms.delay = 0.5  # a fresh triggerer answers its first task-state read slowly
    await kill_while_airflow_recancels(trigger.on_kill())
    assert client.get_result(queued_job).status.value == "cancelled"
    assert runcomfy_emulator.journal.count("cancel") == 1


async def test_on_kill_asks_for_the_mapped_task_instance(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger, comms = killed_trigger(submit(client, runcomfy_emulator), "deferred", monkeypatch, map_index=3)
    await trigger.on_kill()
    assert comms.asked[0].map_index == 3


async def test_on_kill_of_a_running_job_reports_it_will_be_billed(
    running_job: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trigger, _ = killed_trigger(running_job, "failed", monkeypatch)
    await trigger.on_kill()  # Airflow's task loggers write through structlog, to stdout here
    assert "already running or finished (RunComfy will finish and bill it)" in capsys.readouterr().out


async def test_cancel_on_kill_false_never_cancels(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger, _ = killed_trigger(submit(client, runcomfy_emulator), "failed", monkeypatch)
    trigger.cancel_on_kill = False
    await trigger.on_kill()
    assert runcomfy_emulator.journal.count("cancel") == 0
