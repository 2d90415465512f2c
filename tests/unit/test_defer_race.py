"""Issue 20: the RunComfy triggers hold their event until Airflow's scheduler can take it.

Airflow's defer/resume race fails a resumed task when its trigger fires before the scheduler
took the worker's defer exit (``triggers/_base.py``). These tests run the real triggers
against the emulator over real HTTP, in the environment Airflow's triggerer gives them (its
``TriggerCommsDecoder`` as the task SDK's ``SUPERVISOR_COMMS``), and outside it. That the hold
keeps paid jobs from ending as failed tasks is shown in a real deployment on Airflow's default
intervals by ``tests/system/test_defer_race_deployment.py`` and ``bench/defer_race.py``.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
from airflow.sdk.execution_time import task_runner

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT as MODEL
from airflow_provider_runcomfy.triggers import _base
from airflow_provider_runcomfy.triggers.batch import RunComfyBatchTrigger
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

HELD = "handing the outcome to Airflow in"


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> RunComfyClient:
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    return RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url)


@pytest.fixture
def in_triggerer(monkeypatch: pytest.MonkeyPatch):
    """The triggerer's runner as Airflow sets it up (``init_comms``): its own comms decoder."""
    ours, theirs = socket.socketpair()
    comms = TriggerCommsDecoder(async_writer=None, async_reader=None, socket=ours)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    yield comms
    ours.close()
    theirs.close()


@pytest.fixture
def short_guard(monkeypatch: pytest.MonkeyPatch) -> float:
    """A guard of 1.5 s (a 1.5 s worker heartbeat, no idle sleep, no margin): short, yet far longer
    than the emulator takes to answer that a job is done."""
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1.5")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0")
    monkeypatch.setattr(_base, "RESUME_GUARD_MARGIN", 0.0)
    return 1.5


def finished_job(client: RunComfyClient, emu: RunComfyEmulator) -> str:
    return client.submit(MODEL, {"prompt": "p", "image_url": emu.sample_url()}).request_id


def test_the_guard_follows_airflows_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's defaults give 5 s + 2 x 1 s + 3 s; the system tests' short intervals give less."""
    monkeypatch.delenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.delenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", raising=False)
    assert _base.resume_guard_seconds() == 10.0
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.5")
    assert _base.resume_guard_seconds() == 5.0


def test_only_airflows_triggerer_holds(in_triggerer: object, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _base.runs_in_triggerer()
    assert _base.resume_hold() == _base.resume_guard_seconds()
    monkeypatch.setenv(_base.RESUME_GUARD_ENV, "off")  # bench/defer_race.py's switch
    assert _base.resume_hold() == 0.0


def test_no_hold_outside_a_triggerer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare event loop (unit tests) and ``airflow dags test`` (in-process trigger) have no race."""
    from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", None, raising=False)
    assert not _base.runs_in_triggerer()
    monkeypatch.setattr(
        task_runner, "SUPERVISOR_COMMS", InProcessSupervisorComms(supervisor=None), raising=False
    )
    assert not _base.runs_in_triggerer()
    assert _base.resume_hold() == 0.0


async def test_a_job_that_ended_at_once_is_handed_over_after_the_guard(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    in_triggerer: object,
    short_guard: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trigger = RunComfyRequestTrigger(finished_job(client, runcomfy_emulator), poll_interval=0.05)
    started = time.monotonic()
    events = [event.payload async for event in trigger.run()]
    assert time.monotonic() - started >= short_guard  # never before: a lower bound, not a speed
    assert [event["status"] for event in events] == ["succeeded"]
    assert HELD in capsys.readouterr().out


async def test_the_batch_triggers_wake_is_held_too(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    in_triggerer: object,
    short_guard: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every deferral of the batch operator is covered, through the shared base: nothing to call."""
    window = [[finished_job(client, runcomfy_emulator), "key.0", time.time()]]
    trigger = RunComfyBatchTrigger(MODEL, window, poll_interval=0.05)
    started = time.monotonic()
    events = [event.payload async for event in trigger.run()]
    assert time.monotonic() - started >= short_guard
    assert [o["key"] for o in events[0]["outcomes"]] == ["key.0"]
    assert HELD in capsys.readouterr().out


async def test_a_job_that_ends_after_the_guard_is_not_delayed(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    in_triggerer: object,
    short_guard: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=2 * short_guard)
    trigger = RunComfyRequestTrigger(finished_job(client, runcomfy_emulator), poll_interval=0.05)
    events = [event.payload async for event in trigger.run()]
    assert [event["status"] for event in events] == ["succeeded"]
    assert HELD not in capsys.readouterr().out


async def test_outside_a_triggerer_the_event_is_not_held(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    trigger = RunComfyRequestTrigger(finished_job(client, runcomfy_emulator), poll_interval=0.05)
    events = [event.payload async for event in trigger.run()]
    assert [event["status"] for event in events] == ["succeeded"]
    assert HELD not in capsys.readouterr().out
