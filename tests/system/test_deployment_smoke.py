"""Smoke tests of the system-test harness, with Airflow's own operators only.

They prove what the RunComfy scenarios will rely on: the deployment starts and is healthy,
a deferred task holds no executor slot, a triggerer killed with SIGKILL is replaced and its
triggers are resumed, a user can mark a deferred task failed, a running task's process can
be found and killed, and stopping the deployment leaves no process behind.

All tests share one deployment with ``parallelism=1`` (one executor slot): it is what makes
the "no slot held while deferred" measurement meaningful, and it is enough for the others.
The tests run in file order; the last one stops the deployment.
"""

from __future__ import annotations

import time

import psutil
import pytest
from deployment import AirflowDeployment
from deployment_base import wait_until

pytestmark = pytest.mark.system

DEFERRED_DAG = "smoke_deferrable"


@pytest.fixture(scope="module")
def airflow(airflow_deployments) -> AirflowDeployment:
    return airflow_deployments.get(parallelism=1)


def test_deployment_is_healthy_and_runs_a_dag(airflow: AirflowDeployment, record_timing) -> None:
    health = airflow.health()
    assert health is not None
    assert {
        name: health[name]["status"] for name in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    } == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    assert all(proc.poll() is None for proc in airflow.procs.values())

    t0 = time.monotonic()
    run_id = airflow.trigger_dag("smoke_python")
    assert airflow.wait_for_run("smoke_python", run_id, timeout=120) == "success"
    record_timing("trigger -> success, 2 Python tasks", time.monotonic() - t0)
    assert airflow.xcom("smoke_python", run_id, "consume") == 42
    assert "Done. Returned value was: 42" in airflow.task_log("smoke_python", run_id, "consume")


def test_deferred_task_holds_no_executor_slot(airflow: AirflowDeployment, record_timing) -> None:
    """With one slot, two deferrable waits are deferred at the same time, and both runs succeed.

    Had a deferred sensor held the only executor slot, the other could not have started (and
    so not deferred) until the first one's wait was over: both being ``deferred`` at once is
    the proof, whatever the machine's speed. How long the runs took is recorded, not asserted.
    """
    airflow.wait_for_dag(DEFERRED_DAG)
    t0 = time.monotonic()
    runs = [airflow.trigger_dag(DEFERRED_DAG, conf={"wait_seconds": 60}) for _ in range(2)]

    def both_deferred() -> bool:
        return all(airflow.task_instance(DEFERRED_DAG, run, "wait")["state"] == "deferred" for run in runs)

    # 60 s waits: on a slow machine too, the first still waits when the second defers.
    wait_until(both_deferred, 55, 0.3, "the two sensors to be deferred at the same time (one slot)")
    record_timing("both sensors deferred", time.monotonic() - t0)
    ti = airflow.task_instance(DEFERRED_DAG, runs[0], "wait")
    assert ti["trigger"]["classpath"].endswith("DateTimeTrigger")

    for run in runs:
        assert airflow.wait_for_run(DEFERRED_DAG, run, timeout=300) == "success"
    record_timing("2 runs x 60 s deferred wait, parallelism=1", time.monotonic() - t0)
    assert airflow.xcom(DEFERRED_DAG, runs[1], "after_wait") == "resumed"


def test_triggerer_killed_while_deferred_recovers(airflow: AirflowDeployment, record_timing) -> None:
    """SIGKILL the triggerer while it runs a trigger; a new triggerer takes the trigger over."""
    run_id = airflow.trigger_dag(DEFERRED_DAG, conf={"wait_seconds": 25})
    trigger = airflow.wait_for_trigger(DEFERRED_DAG, run_id, "wait", timeout=60)
    old_pid = airflow.procs["triggerer"].pid
    t0 = time.monotonic()
    airflow.kill_triggerer()
    assert airflow.procs["triggerer"].returncode == -9
    assert airflow.task_instance(DEFERRED_DAG, run_id, "wait")["state"] == "deferred"

    airflow.start_triggerer()
    record_timing("triggerer SIGKILL -> new triggerer healthy", time.monotonic() - t0)
    assert airflow.procs["triggerer"].pid != old_pid
    # Same trigger row, claimed by the new triggerer job once the dead one's heartbeat is
    # older than [triggerer] triggerer_health_check_threshold.
    moved = airflow.wait_for_trigger(
        DEFERRED_DAG, run_id, "wait", timeout=60, not_on_triggerer=trigger["triggerer_id"]
    )
    assert moved["id"] == trigger["id"]
    record_timing("triggerer SIGKILL -> trigger running in the new triggerer", time.monotonic() - t0)
    assert airflow.wait_for_run(DEFERRED_DAG, run_id, timeout=90) == "success"
    record_timing("triggerer SIGKILL -> run success (25 s wait)", time.monotonic() - t0)


def test_mark_deferred_task_failed(airflow: AirflowDeployment, record_timing) -> None:
    """A user marks a deferred task failed through REST: it stays failed, the trigger is killed."""
    run_id = airflow.trigger_dag(DEFERRED_DAG, conf={"wait_seconds": 600})
    airflow.wait_for_trigger(DEFERRED_DAG, run_id, "wait", timeout=60)
    t0 = time.monotonic()
    patched = airflow.set_task_state(DEFERRED_DAG, run_id, "wait", "failed")
    assert [t["state"] for t in patched] == ["failed"]
    assert airflow.wait_for_run(DEFERRED_DAG, run_id, timeout=60) == "failed"
    record_timing("mark deferred task failed -> run failed", time.monotonic() - t0)
    ti = airflow.task_instance(DEFERRED_DAG, run_id, "wait")
    assert ti["state"] == "failed"
    assert ti["trigger"] is None
    states = {t["task_id"]: t["state"] for t in airflow.task_instances(DEFERRED_DAG, run_id)}
    assert states == {"wait": "failed", "after_wait": "upstream_failed"}

    # Airflow 3.3: the triggerer cancels the orphaned trigger and calls its async on_kill().
    wait_until(
        lambda: (
            "Trigger cancelled by user action, invoking on_kill"
            in airflow.task_log(DEFERRED_DAG, run_id, "wait")
        ),
        60,
        0.5,
        "the triggerer to invoke the trigger's on_kill",
        lambda: airflow.task_log(DEFERRED_DAG, run_id, "wait"),
    )
    record_timing("mark deferred task failed -> trigger on_kill", time.monotonic() - t0)
    assert airflow.task_instance(DEFERRED_DAG, run_id, "wait")["state"] == "failed"


def test_kill_running_task_process(airflow: AirflowDeployment, record_timing) -> None:
    """Find a running task's process through its task instance and SIGKILL it."""
    run_id = airflow.trigger_dag("smoke_sleep", conf={"seconds": 300})
    airflow.wait_for_task_state("smoke_sleep", run_id, "sleep", "running", timeout=60)
    pid = airflow.task_pid("smoke_sleep", run_id, "sleep")
    supervisor = airflow.supervisor_pid("smoke_sleep", run_id, "sleep")
    assert "LocalExecutor" in " ".join(psutil.Process(supervisor).cmdline())
    t0 = time.monotonic()
    assert airflow.kill_task("smoke_sleep", run_id, "sleep") == pid
    airflow.wait_for_task_state("smoke_sleep", run_id, "sleep", "failed", timeout=60)
    record_timing("task process SIGKILL -> task failed", time.monotonic() - t0)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stop_leaves_no_process(airflow_deployments, airflow: AirflowDeployment, record_timing) -> None:
    """Stop with a task running and one deferred: every process of the deployment is gone."""
    # One executor slot: the deferred task goes first and frees it, or a sleeping task
    # that won the slot would keep the other queued for its whole 300 s.
    deferred = airflow.trigger_dag(DEFERRED_DAG, conf={"wait_seconds": 600})
    airflow.wait_for_task_state(DEFERRED_DAG, deferred, "wait", "deferred", timeout=60)
    sleeping = airflow.trigger_dag("smoke_sleep", conf={"seconds": 300})
    airflow.wait_for_task_state("smoke_sleep", sleeping, "sleep", "running", timeout=60)
    task_pid = airflow.task_pid("smoke_sleep", sleeping, "sleep")
    before = airflow.processes()
    assert task_pid in {p.pid for p in before}
    # Four components, the triggerer's runner, the executor worker and the task process.
    assert len(before) >= 7, [p.pid for p in before]

    airflow_deployments.stop()
    record_timing(
        f"stop with a running and a deferred task ({len(before)} processes)", airflow.timings["stop"]
    )
    assert airflow.processes() == []
    for proc in before:
        assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, proc
