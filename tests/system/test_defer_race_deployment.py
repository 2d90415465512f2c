"""Issue 20: a job RunComfy finished and billed never ends as a failed task, on Airflow's DEFAULT intervals.

Airflow's defer/resume race (apache/airflow #66374, #67287, #71580, #72716) fails a resumed
task when its trigger fires before the scheduler took the worker's defer exit. The other
system scenarios run on shortened intervals (``deployment_config.py``), which hide it: this
one puts Airflow's defaults back (``AIRFLOW_DEFAULT_INTERVALS``: scheduler idle sleep 1 s,
heartbeats 5 s, the workers' ``min_heartbeat_interval`` 5 s -- what ``airflow standalone`` runs)
and runs, per topology, 12 deferrable single-image tasks with ``retries=0`` and jobs of 0.2-6 s,
the lengths that end inside the race window. The seed gives four jobs under 0.7 s: on a quiet
machine LocalExecutor's scheduler took every defer exit within a second, so jobs of 1-6 s
(the range until 2026-12-07) all ended after it and the run did not meet the race at all.

It asserts what a user sees (no task failed while its job succeeded, no "state mismatch"
line), and that the race window was really hit (some jobs ended before the scheduler took
their task's defer exit), so that a pass means "survived the race", not "never met it".
``bench/defer_race.py`` is the large version, and runs it with the provider's guard off too.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from deployment import AIRFLOW_DEFAULT_INTERVALS, AirflowDeployment
from deployment_race import mismatch_lines, paid_request_ids, plan_jobs, read_race
from scenario_helpers import wait_for_log

pytestmark = pytest.mark.system

DAG_ID, COUNT = "runcomfy_defer_race_12", 12
#: What a RunComfy trigger logs when it holds an outcome back (``triggers/_base.py``).
HELD = "handing the outcome to Airflow in"
#: What it logs as it hands over a job that succeeded (``handover_note``): paid, and how to recover.
BILLED = "succeeded and was billed"


@pytest.fixture(scope="module")
def stock_airflow(
    airflow_deployments: Any, runcomfy_emulator_server: Any, topology: str
) -> AirflowDeployment:
    """A deployment on Airflow's default intervals, 4 executor slots, ``runcomfy_default`` at the emulator."""
    env = {**runcomfy_emulator_server.airflow_conn_env(), **AIRFLOW_DEFAULT_INTERVALS}
    return airflow_deployments.get(env_extra=env, parallelism=4, topology=topology)


def test_no_paid_job_ends_as_a_failed_task_on_default_intervals(
    stock_airflow: AirflowDeployment, runcomfy_emulator: Any, record_timing: Any
) -> None:
    tag = f"race-{stock_airflow.topology}"
    plan_jobs(runcomfy_emulator, tag, COUNT, low=0.2, high=6.0, seed=45)  # 0.26 ... 4.51 s
    stock_airflow.wait_for_dag(DAG_ID)
    t0 = time.monotonic()
    run_id = stock_airflow.trigger_dag(DAG_ID, conf={"tag": tag})
    state = stock_airflow.wait_for_run(DAG_ID, run_id, timeout=300)
    record_timing(f"{COUNT} deferrable 0.2-6 s jobs, default intervals", time.monotonic() - t0)

    report = read_race(stock_airflow, runcomfy_emulator, DAG_ID, run_id, tag)
    record_timing("jobs that ended inside the race window", report.exposed, unit="")
    assert report.submits == COUNT  # each paid for once
    assert report.failed_while_paid == [], stock_airflow._run_details(DAG_ID, run_id)
    assert mismatch_lines(stock_airflow) == 0
    assert state == "success", stock_airflow._run_details(DAG_ID, run_id)
    assert report.succeeded == COUNT
    # The window was hit: without the provider's hold these tasks' triggers would have fired
    # before the scheduler took their defer exit (bench/defer_race.py --guard off shows the failures).
    assert report.exposed >= 1, report
    # ... and the hold is what the real triggerer did for them (the trigger's line in the task log).
    logs = {index: stock_airflow.task_log(DAG_ID, run_id, "edit", map_index=index) for index in range(COUNT)}
    held = [index for index, log in logs.items() if HELD in log]
    record_timing("tasks whose outcome the trigger held back", len(held), unit="")
    assert held, "no trigger held its event: is the guard active in the triggerer?"
    # Each task's log (as the UI and REST API show it) says its job was paid and that a clear
    # re-attaches for free: the triggerer's last line before the event, which is where the log of
    # a task the race fails ends.
    # The triggerer writes a trigger's last lines to the task's log a little later: the last
    # triggers of a run showed their hold line but not yet this one (nor Airflow's own "Trigger
    # fired event") right after the run ended, so each log is waited for, up to 60 s.
    paid = paid_request_ids(runcomfy_emulator, tag)
    assert sorted(paid) == list(range(COUNT))
    for index in range(COUNT):
        wait_for_log(
            stock_airflow, DAG_ID, run_id, f"RunComfy request {paid[index]} {BILLED}", 60, map_index=index
        )
