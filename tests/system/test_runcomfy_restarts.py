"""Issues #5 and #12: components killed and restarted under RunComfy jobs, in a real Airflow deployment.

Components are killed under running jobs of the RunComfy scenarios' deployment (one executor
slot, the session's emulator; see ``scenario_helpers.py``).

Where Celery behaves differently (a scheduler restart does not touch a task running on a
worker; with two triggerers a dead one's triggers move to the other without a restart) the
test says so and asserts what is right there.  A scenario about Airflow itself rather than
the deployment runs on ``local`` only (``@pytest.mark.topologies``), to keep the Celery share
of CI small.

Scenarios (every wait is bounded):

1. ``kill -9`` of the triggerer with 10 tasks deferred, then a new triggerer: all succeed,
   no cancel, no extra submit.
2. ``kill -9`` of the scheduler (and its executor workers) with a task deferred and a
   blocking one polling: both succeed; the blocking task's next try re-attaches.
3. Triggers moved to another triggerer (HA): the ``on_kill`` Airflow calls on the old one
   does not cancel the jobs.
4. A blocking task whose process is SIGKILLed after submitting: the retry re-attaches;
   one submit.  (A whole worker lost: ``test_runcomfy_worker_loss.py``.)
"""

from __future__ import annotations

import signal
import time

import pytest
from deployment import AirflowDeployment
from scenario_helpers import (
    BLOCKING,
    DEFERRED,
    FANOUT_2,
    FANOUT_10,
    cancels_of,
    jobs_tagged,
    on_kill_returned,
    second_try_reattached,
    state_store,
    submits_tagged,
    task_instances,
    wait_for_log,
    wait_until,
    worker_parts,
)

pytestmark = pytest.mark.system


def test_triggerer_killed_and_restarted(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """1. kill -9 a triggerer while 10 tasks are deferred; the triggers resume elsewhere, mid-job.

    ``local``: the only triggerer; a new one is started and takes its triggers over.
    ``celery`` (two triggerers): the one running the first task's trigger is killed and *not*
    restarted until the other has taken over every trigger it ran (rows it claims with
    ``SELECT ... FOR UPDATE SKIP LOCKED`` once the dead one's heartbeat is older than the
    health-check threshold); the triggers the survivor already ran stay where they are.
    """
    tag, count = "s4-triggerer-restart", 10
    # Held in RunComfy's queue until the takeover is done: every wait resumes mid-job, on any machine.
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=1)
    run_id = airflow.trigger_dag(FANOUT_10, conf={"prompt": f"{tag}: make it blue"})
    old = {
        i: airflow.wait_for_trigger(FANOUT_10, run_id, "edit", map_index=i, timeout=90) for i in range(count)
    }
    jobs = jobs_tagged(emulator, tag)
    assert len(jobs) == count and {job.phase for job in jobs} == {"in_queue"}
    victim = airflow.triggerer_of(old[0]["triggerer_id"])
    dead_job = airflow.triggerer_jobs[victim]
    orphans = [i for i, trigger in old.items() if trigger["triggerer_id"] == dead_job]
    survivors = {job for name, job in airflow.triggerer_jobs.items() if name != victim}
    record_timing(f"triggers on the killed triggerer (of {count})", len(orphans), unit="")

    t0 = time.monotonic()
    airflow.kill_triggerer(victim)
    try:
        if not survivors:
            airflow.start_triggerer(victim)
            record_timing("triggerer SIGKILL -> new triggerer healthy", time.monotonic() - t0)
            survivors = {airflow.triggerer_jobs[victim]}
        phases = {job.request_id: job.phase for job in jobs}
        for i in orphans:  # the same trigger rows, resumed by another triggerer job
            moved = airflow.wait_for_trigger(
                FANOUT_10, run_id, "edit", map_index=i, timeout=60, not_on_triggerer=dead_job
            )
            assert moved["id"] == old[i]["id"] and moved["triggerer_id"] in survivors
            request_id = airflow.xcom(FANOUT_10, run_id, "edit", key="request_id", map_index=i)
            phases[request_id] = emulator.job(request_id).phase
        record_timing(f"triggerer SIGKILL -> {len(orphans)} triggers running again", time.monotonic() - t0)
        assert set(phases.values()) == {"in_queue"}, phases  # each wait resumed mid-job
        assert len(emulator.release()) == count
        assert airflow.wait_for_run(FANOUT_10, run_id, timeout=120) == "success"
        record_timing(f"triggerer SIGKILL -> {count} tasks success", time.monotonic() - t0)
    finally:
        if airflow.procs[victim].poll() is not None:  # HA: back to two triggerers for what follows
            airflow.start_triggerer(victim)
    tis = task_instances(airflow, FANOUT_10, run_id)
    assert [ti["try_number"] for ti in tis] == [1] * count
    request_ids = {job.request_id for job in jobs}
    assert len(submits_tagged(emulator, tag)) == count  # no extra submit
    assert cancels_of(emulator, request_ids) == []  # and nothing cancelled
    assert {
        airflow.xcom(FANOUT_10, run_id, "edit", map_index=i)["request_id"] for i in range(count)
    } == request_ids


def test_scheduler_killed_and_restarted(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """2. kill -9 the scheduler (and with it the LocalExecutor's workers) with one task deferred
    and one blocking task polling in a worker; a new scheduler finishes both, one submit each.

    The deferred task needs no scheduler while it waits.  ``local``: the blocking task's
    supervisor dies with the scheduler; the new scheduler resets the orphaned task instance and
    its next try re-attaches to the job instead of submitting again.  ``celery``: the task runs
    on a Celery worker the scheduler does not own: it goes on polling, the new scheduler adopts
    it (by its Celery task id), and it finishes in its first try.

    Both jobs are held in RunComfy's queue until the new scheduler is up and, on ``local``,
    the blocking task's next try has looked at its job: that try must find it still waiting
    and re-attach.  (Released earlier, the 1 s job may be finished by then, and the retry
    rightly reuses its outputs instead: the scenario would no longer be the one named.)
    """
    tag = "s5-scheduler"
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=1)
    deferred = airflow.trigger_dag(DEFERRED, conf={"prompt": f"{tag}-deferred: make it blue"})
    airflow.wait_for_trigger(DEFERRED, deferred, "edit", timeout=60)
    blocking = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}-blocking: make it blue"})
    airflow.wait_for_task_state(BLOCKING, blocking, "edit", "running", timeout=60)
    wait_for_log(airflow, BLOCKING, blocking, " is in_", timeout=30)  # submitted, polling
    request_ids = {
        dag_id: airflow.xcom(dag_id, run_id, "edit", key="request_id")
        for dag_id, run_id in ((DEFERRED, deferred), (BLOCKING, blocking))
    }

    t0 = time.monotonic()
    airflow.kill_component("scheduler")
    started = time.time()
    airflow.start_component("scheduler")
    airflow.wait_healthy(["scheduler"], timeout=60, heartbeat_after=started)
    record_timing("scheduler SIGKILL -> new scheduler healthy", time.monotonic() - t0)
    if airflow.topology == "local":
        reattached = f"Re-attaching to RunComfy request {request_ids[BLOCKING]} of an earlier try (in_queue)"
        wait_for_log(airflow, BLOCKING, blocking, reattached, timeout=120, try_number=2)
        record_timing("scheduler SIGKILL -> next try re-attached", time.monotonic() - t0)
    assert [emulator.job(rid).phase for rid in request_ids.values()] == ["in_queue", "in_queue"]
    assert sorted(emulator.release()) == sorted(request_ids.values())
    for dag_id, run_id in ((DEFERRED, deferred), (BLOCKING, blocking)):
        assert airflow.wait_for_run(dag_id, run_id, timeout=120) == "success", dag_id
        record_timing(f"scheduler SIGKILL -> {dag_id} success", time.monotonic() - t0)

    assert airflow.task_instance(DEFERRED, deferred, "edit")["try_number"] == 1
    if airflow.topology == "local":
        assert airflow.task_instance(BLOCKING, blocking, "edit")["try_number"] == 2
        log = airflow.task_log(BLOCKING, blocking, "edit", try_number=2)
        assert f"Re-attaching to RunComfy request {request_ids[BLOCKING]} of an earlier try" in log, log
    else:
        assert airflow.task_instance(BLOCKING, blocking, "edit")["try_number"] == 1
        log = airflow.task_log(BLOCKING, blocking, "edit", try_number=1)
        assert f"RunComfy request {request_ids[BLOCKING]} succeeded" in log, log
    assert len(submits_tagged(emulator, tag)) == 2  # one per task, none again
    assert cancels_of(emulator, request_ids.values()) == []
    for dag_id, run_id in ((DEFERRED, deferred), (BLOCKING, blocking)):
        assert airflow.xcom(dag_id, run_id, "edit")["request_id"] == request_ids[dag_id]


@pytest.mark.topologies("local")
def test_trigger_moved_to_another_triggerer_is_not_cancelled(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    """3. A hung triggerer's triggers move to a second triggerer; the old one's on_kill cancels nothing.

    Airflow 3.3.2 calls ``on_kill`` when a triggerer finds that triggers it runs are now
    assigned to another triggerer.  The trigger reads the task's state (mapped tasks here),
    sees it still deferred and leaves the job alone.  The jobs are held in the queue through
    the whole move, so a wrong cancel would succeed (and show in the journal).  That the
    per-map-index lookup finds the right task (and so does cancel when it should) is proven by
    ``test_runcomfy_cancel.py::test_mark_mapped_deferred_task_failed_cancels_only_its_job``.
    """
    tag, count = "s6-moved", 2
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=1)
    run_id = airflow.trigger_dag(FANOUT_2, conf={"prompt": f"{tag}: make it blue"})
    first = [
        airflow.wait_for_trigger(FANOUT_2, run_id, "edit", map_index=i, timeout=60) for i in range(count)
    ]
    old_triggerer = first[0]["triggerer_id"]
    request_ids = [e.request_id for e in submits_tagged(emulator, tag)]
    assert len(request_ids) == count

    def second_triggerer() -> int | None:
        response = airflow.api.get("/jobs", params={"job_type": "TriggererJob", "is_alive": True})
        return next((job["id"] for job in response.json()["jobs"] if job["id"] > old_triggerer), None)

    t0 = time.monotonic()
    airflow.start_component("triggerer-2")
    try:
        second = wait_until(second_triggerer, 60, "a second triggerer to heartbeat")
        record_timing("second triggerer started", time.monotonic() - t0)
        t0 = time.monotonic()
        airflow.pause_component("triggerer")  # hung: no heartbeat, its triggers look orphaned
        try:
            for i in range(count):
                moved = airflow.wait_for_trigger(
                    FANOUT_2, run_id, "edit", map_index=i, timeout=60, not_on_triggerer=old_triggerer
                )
                assert moved["id"] == first[i]["id"] and moved["triggerer_id"] == second
            record_timing(
                "triggerer paused -> triggers running on the other triggerer", time.monotonic() - t0
            )
        finally:
            airflow.resume_component("triggerer")  # it finds its triggers are no longer its own
        # The old triggerer's part of each task's log: Airflow invoked on_kill, and it returned.
        for i in range(count):
            worker_log = airflow.task_log_path(FANOUT_2, run_id, "edit", map_index=i)
            old_log = worker_log.with_name(f"{worker_log.name}.trigger.{old_triggerer}.log")
            wait_until(
                lambda path=old_log: on_kill_returned(path), 60, f"on_kill of [{i}] on the old triggerer"
            )
        record_timing("triggerer resumed -> its on_kill ran", time.monotonic() - t0)
        phases = [emulator.job(rid).phase for rid in request_ids]
        assert phases == ["in_queue"] * count, "the jobs left the queue: the test proves nothing"
        assert cancels_of(emulator, request_ids) == []

        assert sorted(emulator.release()) == sorted(request_ids)
        assert airflow.wait_for_run(FANOUT_2, run_id, timeout=90) == "success"
        record_timing("triggers moved -> tasks success", time.monotonic() - t0)
    finally:
        airflow.kill_component("triggerer-2", signal.SIGTERM, timeout=30)
    assert cancels_of(emulator, request_ids) == []
    assert len(submits_tagged(emulator, tag)) == count


def test_worker_death_retry_reattaches(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """4. SIGKILL the task process after it submitted: the retry re-attaches, one submit in all.

    The job is held in RunComfy's queue until the retry has looked at it, so the retry meets
    a job still waiting and must re-attach (released at the kill, the 1 s job is finished
    before the retry starts, and the retry rightly reuses its outputs: another scenario).
    """
    tag = "s9-worker-death"
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=1)
    run_id = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}: make it blue"})
    airflow.wait_for_task_state(BLOCKING, run_id, "edit", "running", timeout=60)

    def submitted() -> str | None:
        response = airflow.api.get(
            f"/dags/{BLOCKING}/dagRuns/{run_id}/taskInstances/edit/xcomEntries/request_id"
        )
        return response.json()["value"] if response.status_code == 200 else None

    request_id = wait_until(submitted, 30, "the request_id XCom")
    assert [e.request_id for e in submits_tagged(emulator, tag)] == [request_id]
    assert state_store(airflow, BLOCKING, run_id, "runcomfy_request")["request_id"] == request_id
    t0 = time.monotonic()
    airflow.kill_task(BLOCKING, run_id, "edit")  # SIGKILL: no on_kill, no cleanup
    reattached = f"Re-attaching to RunComfy request {request_id} of an earlier try"
    wait_for_log(airflow, BLOCKING, run_id, f"{reattached} (in_queue)", timeout=120, try_number=2)
    record_timing("task process SIGKILL -> retry re-attached", time.monotonic() - t0)
    assert emulator.job(request_id).phase == "in_queue"
    assert emulator.release(request_id) == [request_id]

    assert airflow.wait_for_run(BLOCKING, run_id, timeout=120) == "success"
    record_timing("task process SIGKILL -> retry succeeded", time.monotonic() - t0)
    ti = second_try_reattached(airflow, BLOCKING, run_id, reattached)
    assert len(submits_tagged(emulator, tag)) == 1  # exactly one submit for the task instance
    assert cancels_of(emulator, [request_id]) == []
    assert emulator.job(request_id).phase == "succeeded"
    assert airflow.xcom(BLOCKING, run_id, "edit")["request_id"] == request_id
    parts = worker_parts(airflow, [ti["id"]])[ti["id"]]
    assert [w.final_state for w in parts][-1] == "success"
