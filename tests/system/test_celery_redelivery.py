"""Issue #12: Redis redelivers a message a worker holds past the visibility timeout (Celery only).

With ``task_acks_late`` (Airflow's default) a worker acknowledges a task's message when the
task ends.  Redis does not know the task is running: a message unacknowledged for longer than
``[celery_broker_transport_options] visibility_timeout`` is handed to another worker, while
the first still runs it.  A blocking RunComfy wait longer than the visibility timeout is
exactly that case.  What must hold: the second delivery does not run the task again (Airflow
3.3's execution API refuses to start a task instance that is already running, and the Celery
task ignores the duplicate), so nothing is submitted twice and the task finishes in its first
try.  The deployment here lowers the visibility timeout to 10 s for a 35 s job; production
keeps it above the longest task (Airflow's default: a day).

Redis itself redelivers nothing: each worker sweeps the unacknowledged messages older than
the visibility timeout back into the queue every ``unacked_restore_interval`` x
``unacked_restore_throttle`` seconds (kombu 5.7: 10 x 10, so up to 100 s late).  Here the
sweep runs every second, so that the redelivery happens while the job runs.
"""

from __future__ import annotations

import time

import pytest
from deployment import FAST_ORPHAN_RESET, AirflowDeployment
from scenario_helpers import (
    BLOCKING,
    cancels_of,
    jobs_tagged,
    submits_tagged,
    wait_until,
    worker_parts,
)

pytestmark = pytest.mark.system

VISIBILITY_TIMEOUT = 10
IGNORED = "Task already running elsewhere, ignoring redelivered message"


@pytest.fixture(scope="module")
def airflow(airflow_deployments, runcomfy_emulator_server, topology: str) -> AirflowDeployment:
    env = {
        **runcomfy_emulator_server.airflow_conn_env(),
        **FAST_ORPHAN_RESET,
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_INTERVAL": "1",
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_THROTTLE": "1",
    }
    return airflow_deployments.get(env_extra=env, parallelism=1, topology=topology)


def worker_logs(airflow: AirflowDeployment) -> str:
    return "\n".join(airflow.log_path(name).read_text(errors="replace") for name in airflow.worker_names)


@pytest.mark.topologies("celery")
def test_redelivered_message_does_not_run_the_task_twice(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    tag, job_seconds = "r1-redelivery", 35
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=job_seconds)
    assert IGNORED not in worker_logs(airflow)
    t0 = time.monotonic()
    run_id = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}: make it blue"})
    airflow.wait_for_task_state(BLOCKING, run_id, "edit", "running", timeout=60)

    # Redis hands the unacknowledged message to the other (idle) worker while the job runs.
    wait_until(lambda: IGNORED in worker_logs(airflow), job_seconds, "the redelivered message", interval=0.5)
    record_timing(
        f"run triggered -> message redelivered (visibility_timeout={VISIBILITY_TIMEOUT})",
        time.monotonic() - t0,
    )
    assert airflow.task_instance(BLOCKING, run_id, "edit")["state"] == "running"

    assert airflow.wait_for_run(BLOCKING, run_id, timeout=120) == "success"
    ti = airflow.task_instance(BLOCKING, run_id, "edit")
    assert ti["try_number"] == 1
    log = airflow.task_log(BLOCKING, run_id, "edit")
    assert log.count("Submitted RunComfy request") == 1, log
    assert len(jobs_tagged(emulator, tag)) == 1 and len(submits_tagged(emulator, tag)) == 1
    request_id = jobs_tagged(emulator, tag)[0].request_id
    assert cancels_of(emulator, [request_id]) == []
    assert airflow.xcom(BLOCKING, run_id, "edit")["request_id"] == request_id
    # The duplicate never reached a task process: one workload for the task instance.
    workloads = worker_parts(airflow, [ti["id"]])[ti["id"]]
    assert [w.final_state for w in workloads] == ["success"], workloads
