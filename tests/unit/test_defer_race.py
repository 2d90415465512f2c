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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder
from airflow.sdk.execution_time import task_runner
from airflow.triggers.base import TriggerEvent

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
    """A guard of 4 s (a 4 s worker heartbeat, no idle sleep, no margin): short, yet far longer
    than the emulator takes to answer that a job is done, even on a loaded machine (with 1.5 s the
    first answer came after the guard about once in ten CI runs, so nothing was held)."""
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "4")
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0")
    monkeypatch.setattr(_base, "RESUME_GUARD_MARGIN", 0.0)
    return 4.0


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


# -- the hand-over line: a task the race fails still says, in its log, that its job was paid --------

#: What a RunComfy trigger logs as it hands over jobs that succeeded (``handover_note``).
BILLED = "succeeded and was billed"
BILLED_BATCH = "succeeded and were billed"


def job(client: RunComfyClient, emu: RunComfyEmulator, prompt: str = "p") -> str:
    return client.submit(MODEL, {"prompt": prompt, "image_url": emu.sample_url()}).request_id


async def test_a_succeeded_job_is_handed_over_with_a_line_naming_it_and_how_to_recover(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    in_triggerer: object,
    short_guard: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In the race, the task's log ends at Airflow's "Trigger fired event": this line comes just before."""
    request_id = job(client, runcomfy_emulator)
    (event,) = [event.payload async for event in RunComfyRequestTrigger(request_id, poll_interval=0.05).run()]
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if BILLED in line]
    assert f"RunComfy request {request_id} succeeded and was billed" in line
    assert "clear it or let a retry run: it re-attaches to this request and pays nothing again" in line
    assert out.index(HELD) < out.index(BILLED)  # after the hold: the last word before the event
    assert out.rstrip().splitlines()[-1] == line
    # ids only: no pre-signed output URL (a credential), no token
    assert event["outputs"] and not any(url in out for url in event["outputs"])
    assert "http" not in line and runcomfy_emulator.token not in out


async def test_no_billed_line_for_a_job_that_failed(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="nsfw", fail_message="NSFW content detected")
    trigger = RunComfyRequestTrigger(job(client, runcomfy_emulator, "nsfw"), poll_interval=0.05)
    assert [event.payload["status"] async for event in trigger.run()] == ["failed"]
    assert BILLED not in capsys.readouterr().out


async def test_the_batch_trigger_counts_the_succeeded_jobs_it_hands_over(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="nsfw", fail_message="NSFW content detected")
    window = [
        [job(client, runcomfy_emulator), "key.0", time.time()],
        [job(client, runcomfy_emulator, "nsfw"), "key.1", time.time()],
    ]
    trigger = RunComfyBatchTrigger(MODEL, window, poll_interval=0.05, wake_count=2)
    (event,) = [event.payload async for event in trigger.run()]
    assert sorted(o["status"] for o in event["outcomes"]) == ["failed", "succeeded"]
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if BILLED_BATCH in line]
    assert "RunComfy batch: 1 of the 2 finished jobs handed to the task succeeded and were billed" in line
    assert "re-attaches to them from the batch's ledger and pays nothing again" in line
    assert "http" not in line and runcomfy_emulator.token not in out


async def test_no_batch_line_when_no_handed_over_job_succeeded(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="nsfw", fail_message="NSFW content detected")
    window = [[job(client, runcomfy_emulator, "nsfw"), "key.0", time.time()]]
    (event,) = [
        event.payload async for event in RunComfyBatchTrigger(MODEL, window, poll_interval=0.05).run()
    ]
    assert [o["status"] for o in event["outcomes"]] == ["failed"]
    assert BILLED_BATCH not in capsys.readouterr().out


@dataclass(eq=False, repr=False)
class NoteFails(_base.FieldsTrigger):
    """A trigger whose hand-over line cannot be built: its event must still leave."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"status": "succeeded", "request_id": "r"})

    def handover_note(self, payload: dict[str, Any]) -> str | None:
        raise KeyError("outcomes")


async def test_a_hand_over_line_that_cannot_be_built_never_costs_the_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert [event.payload async for event in NoteFails().run()] == [
        {"status": "succeeded", "request_id": "r"}
    ]
    assert "Could not describe the outcome handed over" in capsys.readouterr().out
