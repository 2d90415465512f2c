"""Issue #12: a worker lost with the task it runs (``kill -9``), on both topologies.

A lost worker is a machine gone: every process of it dies at once, nothing reports.

- ``celery``: the whole Celery worker (main process, pool processes, the task's supervisor
  and the task process) is SIGKILLed, then started again.  The broker message stays
  unacknowledged (``task_acks_late``), so Redis would hand it to another worker only after
  the visibility timeout (an hour here, a day by default): the task is noticed dead by the
  scheduler, through the missing task heartbeats, after ``task_instance_heartbeat_timeout``.
- ``local``: the task's supervisor (the LocalExecutor's worker process) and the task process;
  the scheduler lives on and notices the same way.

Each scenario uses the same deployment as the other ``test_runcomfy_*.py`` (one executor slot,
``task_instance_heartbeat_timeout`` 30 s) and asserts what RunComfy was asked: one submit
for the task instance, however its tries went.

1. During a blocking wait: the retry re-attaches to the job (or reuses its outputs).
2. While the submit's answer is on its way (RunComfy created the job): the retry does not
   submit again; it fails and tells the user where to look, since the request id was lost.
3. During the short resume step of a deferred task (copying the outputs): the retry reuses
   the outputs of the job; nothing is submitted again.
"""

from __future__ import annotations

import time

import pytest
from deployment import AirflowDeployment
from scenario_helpers import (
    BLOCKING,
    DEFERRED_RETRY,
    cancels_of,
    jobs_tagged,
    lose_worker,
    second_try_reattached,
    state_store,
    submits_tagged,
    wait_for_log,
    wait_until,
)

pytestmark = pytest.mark.system

REATTACHED = "of an earlier try"  # "Re-attaching to ..." or "Reusing the outputs of ..."


def test_worker_lost_during_blocking_wait(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """1. The worker dies while the task polls its job: the retry re-attaches; one submit."""
    tag = "w1-blocking"
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=50)
    run_id = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}: make it blue"})
    airflow.wait_for_task_state(BLOCKING, run_id, "edit", "running", timeout=60)
    wait_for_log(airflow, BLOCKING, run_id, " is in_progress", timeout=60)  # submitted, polling
    request_id = airflow.xcom(BLOCKING, run_id, "edit", key="request_id")
    assert state_store(airflow, BLOCKING, run_id, "runcomfy_request")["request_id"] == request_id

    t0 = lose_worker(airflow, BLOCKING, run_id, record_timing)
    assert airflow.wait_for_run(BLOCKING, run_id, timeout=150) == "success"
    record_timing("worker SIGKILL -> retry succeeded (50 s job)", time.monotonic() - t0)

    second_try_reattached(airflow, BLOCKING, run_id, f"RunComfy request {request_id} {REATTACHED}")
    assert len(jobs_tagged(emulator, tag)) == 1 and len(submits_tagged(emulator, tag)) == 1
    assert cancels_of(emulator, [request_id]) == []
    assert airflow.xcom(BLOCKING, run_id, "edit")["request_id"] == request_id


def test_worker_lost_while_the_submit_answer_is_on_its_way(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    """2. The worker dies after RunComfy created the job, before the answer: no second submit.

    The request id never reached the task, so no retry can re-attach.  The intent recorded
    before the POST tells the retry that a job may exist: it fails without submitting and
    says where to look, rather than paying for a second job.
    """
    tag = "w2-submit"
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=5)
    emulator.add_fault("submit", "delay", seconds=90, times=1)  # the job exists; the answer waits
    run_id = airflow.trigger_dag(DEFERRED_RETRY, conf={"prompt": f"{tag}: make it blue"})
    airflow.wait_for_task_state(DEFERRED_RETRY, run_id, "edit", "running", timeout=60)
    wait_until(lambda: jobs_tagged(emulator, tag), 60, "RunComfy to create the job")
    record = state_store(airflow, DEFERRED_RETRY, run_id, "runcomfy_request")
    assert record and record.get("intent") and not record.get("request_id"), record

    t0 = lose_worker(airflow, DEFERRED_RETRY, run_id, record_timing)
    assert airflow.wait_for_run(DEFERRED_RETRY, run_id, timeout=120) == "failed"
    record_timing("worker SIGKILL -> retry stopped without submitting", time.monotonic() - t0)

    ti = airflow.task_instance(DEFERRED_RETRY, run_id, "edit")
    assert ti["state"] == "failed" and ti["try_number"] == 2
    log = airflow.task_log(DEFERRED_RETRY, run_id, "edit", try_number=2)
    assert "did not learn its request id" in log and "RunComfy dashboard" in log, log
    assert "Submitted RunComfy request" not in log, log
    jobs = jobs_tagged(emulator, tag)
    assert len(jobs) == 1, [job.request_id for job in jobs]  # the one job the first try paid for
    assert cancels_of(emulator, [jobs[0].request_id]) == []


def test_worker_lost_during_resume_step(
    airflow: AirflowDeployment, emulator, record_timing, tmp_path_factory
) -> None:
    """3. The worker dies while the resumed task copies the outputs: the retry reuses the job."""
    tag = "w3-resume"
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=3)
    emulator.add_fault("file", "delay", seconds=90, times=1)  # holds the resume step in the worker
    output_dir = tmp_path_factory.mktemp(f"outputs-{airflow.topology}")
    run_id = airflow.trigger_dag(
        DEFERRED_RETRY, conf={"prompt": f"{tag}: make it blue", "output_dir": f"file://{output_dir}"}
    )
    airflow.wait_for_trigger(DEFERRED_RETRY, run_id, "edit", timeout=60)
    request_id = airflow.xcom(DEFERRED_RETRY, run_id, "edit", key="request_id")
    # Resumed in a worker, past "succeeded", now fetching the outputs (delayed).
    wait_for_log(airflow, DEFERRED_RETRY, run_id, f"RunComfy request {request_id} succeeded with", timeout=60)
    ti = airflow.task_instance(DEFERRED_RETRY, run_id, "edit")
    assert ti["state"] == "running" and ti["try_number"] == 1, ti

    t0 = lose_worker(airflow, DEFERRED_RETRY, run_id, record_timing)
    assert airflow.wait_for_run(DEFERRED_RETRY, run_id, timeout=120) == "success"
    record_timing("worker SIGKILL in the resume step -> retry succeeded", time.monotonic() - t0)

    log = airflow.task_log(DEFERRED_RETRY, run_id, "edit", try_number=2)
    assert f"Reusing the outputs of RunComfy request {request_id} of an earlier try" in log, log
    result = airflow.xcom(DEFERRED_RETRY, run_id, "edit")
    assert result["request_id"] == request_id
    assert result["stored"] and all(entry["uri"].startswith("file://") for entry in result["stored"])
    assert len(jobs_tagged(emulator, tag)) == 1 and len(submits_tagged(emulator, tag)) == 1
    assert cancels_of(emulator, [request_id]) == []
