"""RunComfyRequestTrigger driven directly in an event loop, against the emulator over real HTTP.

The on_kill tests here stand in for the triggerer's task-state channel (``task_states.py``)
to steer the state; the key under which Airflow answers is proven against Airflow's own
task-state API and a real metadata database in ``test_on_kill_reads_a_mapped_tasks_state_
through_airflows_real_task_state_api``, and in a real deployment by
``tests/system/test_runcomfy_cancel.py::test_mark_mapped_deferred_task_failed_cancels_only_its_job``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.execution_time import task_runner
from task_states import TaskInstance, airflow_kills, install, kill_while_airflow_recancels

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
    """A job held in RunComfy's queue until the test ends: cancelled there, it costs nothing."""
    runcomfy_emulator.add_rule(hold=True)
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


#: A bound that only a hang reaches: these tests wait on the event, never on the clock.
HANG = 120


async def test_timeout_event_at_the_wall_clock_deadline(
    queued_job: str, runcomfy_emulator: RunComfyEmulator
) -> None:
    trigger = RunComfyRequestTrigger(queued_job, poll_interval=0.2, deadline=time.time() + 0.6)
    event = await asyncio.wait_for(only_event(trigger), HANG)
    assert event["status"] == "timeout"
    assert runcomfy_emulator.job(queued_job).phase == "in_queue"  # held: only the deadline ended it
    # Stopped at the deadline: one poll per interval, plus the first and a last look at the deadline
    # (round(): 0.6 / 0.2 is 2.9999999999999996 in floating point).
    assert 1 <= runcomfy_emulator.journal.count("status") <= round(0.6 / 0.2) + 2


async def test_a_deadline_already_past_after_a_restart_is_not_reset(
    queued_job: str, runcomfy_emulator: RunComfyEmulator
) -> None:
    _, kwargs = RunComfyRequestTrigger(queued_job, poll_interval=3600, deadline=time.time() - 1).serialize()
    # A trigger that waited for its poll_interval (an hour) would hit HANG and fail loudly.
    event = await asyncio.wait_for(only_event(RunComfyRequestTrigger(**kwargs)), HANG)
    assert event["status"] == "timeout"
    assert runcomfy_emulator.journal.count("status") <= 1  # one poll at most, no wait


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


async def test_the_trigger_completes_only_after_the_cancel_and_its_log_line(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    monkeypatch: pytest.MonkeyPatch,
    queued_job: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Airflow's own sequence (``airflow_kills``): a slow task-state read and a cancel RunComfy
    first answers 503 + ``Retry-After: 1``; when the trigger completes (its log closes), the job
    is cancelled and the line saying so was logged. Seen failing in CI without ``cleanup``."""
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_RETRYING", json.dumps({**conn, "extra": {"max_retries": 2}}))
    trigger, comms = killed_trigger(queued_job, "failed", monkeypatch)
    trigger.runcomfy_conn_id = "runcomfy_retrying"  # the cancel is retried, as on a real connection
    comms.delay = 0.5
    runcomfy_emulator.add_fault("cancel", "http", status=503, retry_after=1, times=1, request_id=queued_job)
    await airflow_kills(trigger)
    assert [entry.status_code for entry in runcomfy_emulator.journal.of("cancel")] == [503, 202]
    assert f"RunComfy request {queued_job} was cancelled" in capsys.readouterr().out


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


# -- the guard against Airflow's real task-state API -----------------------------------------------

MAPPED_DAG = """
import pendulum
from airflow.sdk import DAG, task

with DAG("guard_mapped", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):

    @task
    def edit(n: int) -> int:
        return n

    edit.expand(n=[0, 1, 2])
"""

#: Run in the throwaway AIRFLOW_HOME once ``airflow dags test guard_mapped`` has made the mapped task
#: instances: the user marks map index 1 failed while its siblings stay deferred; then each trigger's
#: ``on_kill`` asks Airflow's own request handler, execution API route and database, wired as the
#: triggerer's supervisor wires them (``TriggerRunnerSupervisor``'s in-process API client).
GUARD_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    from sqlalchemy import select

    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.jobs.triggerer_job_runner import in_process_api_server
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.api.client import Client
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates
    from airflow.sdk.execution_time.request_handlers import handle_get_task_states
    from airflow.utils.session import create_session

    from airflow_provider_runcomfy.triggers._guard import task_state
    from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

    request_ids = json.loads(sys.argv[1])
    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == "guard_mapped")).all()
        for ti in tis:
            ti.state = "failed" if ti.map_index == 1 else "deferred"
        session.flush()
        dtos = {ti.map_index: TaskInstanceDTO.model_validate(ti, from_attributes=True) for ti in tis}

    client = Client(base_url=None, token="", dry_run=True, transport=in_process_api_server().transport)
    client.base_url = "http://in-process.invalid./"


    class TriggererSupervisor:
        async def asend(self, msg):
            assert isinstance(msg, GetTaskStates), msg
            response, _ = handle_get_task_states(client, msg)
            return response


    task_runner.SUPERVISOR_COMMS = TriggererSupervisor()


    async def main():
        read = {}
        for map_index, request_id in enumerate(request_ids):
            trigger = RunComfyRequestTrigger(request_id, poll_interval=1)
            trigger.task_instance = dtos[map_index]
            read[map_index] = await task_state(trigger)
            await trigger.on_kill()
        print("STATES " + json.dumps(read))


    asyncio.run(main())
    """
)


@pytest.mark.integration
def test_on_kill_reads_a_mapped_tasks_state_through_airflows_real_task_state_api(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    """A user marks one mapped deferred task failed: its job is cancelled, its siblings' are not.

    Airflow answers GetTaskStates keyed ``<task_id>_<map_index>`` for mapped task instances;
    a guard that looked under another key would read no state and never cancel.
    """
    runcomfy_emulator.add_rule(hold=True)  # every job stays queued: cancellable, until the test ends
    request_ids = [submit(client, runcomfy_emulator, f"map {i}") for i in range(3)]
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "guard_mapped.py").write_text(MAPPED_DAG)
    (tmp_path / "guard.py").write_text(GUARD_SCRIPT)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        **runcomfy_emulator.airflow_conn_env(),
    }
    for argv in (
        ["-m", "airflow", "db", "migrate"],
        ["-m", "airflow", "dags", "test", "guard_mapped"],
        [str(tmp_path / "guard.py"), json.dumps(request_ids)],
    ):
        done = subprocess.run(
            [sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    line = next(line for line in done.stdout.splitlines() if line.startswith("STATES "))
    assert json.loads(line.removeprefix("STATES ")) == {"0": "deferred", "1": "failed", "2": "deferred"}
    assert [entry.request_id for entry in runcomfy_emulator.journal.of("cancel")] == [request_ids[1]]
    assert [runcomfy_emulator.job(rid).phase for rid in request_ids] == ["in_queue", "cancelled", "in_queue"]
