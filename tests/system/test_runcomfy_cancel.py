"""Issues #5 and #12: a RunComfy job is cancelled when its task is, in a real Airflow deployment.

On the RunComfy scenarios' deployment (one executor slot, the session's emulator as
``runcomfy_default``; see ``scenario_helpers.py``).

The user marks a task failed or clears it, or the operator's ``timeout`` passes: the job
must be cancelled when RunComfy still can (queued: cancelled, not billed) and said not
cancellable when it cannot (running), and never be billed twice.  Two scenarios about
Airflow itself run on ``local`` only (``@pytest.mark.topologies``).

Scenarios (every wait is bounded):

1. A deferred task cleared by a user while the slot is busy and the cancel slow: the run
   succeeds and exactly one job is billed (``local`` only).
2. A deferred task marked failed: the trigger cancels its job (queued: cancelled; running:
   not cancellable, said so), also from a fresh triggerer and through a retried cancel.
3. ``timeout=5`` on 60 s jobs: the task fails naming the timeout and the job is cancelled
   (queued) or said not cancellable (running), deferred and blocking.
4. A blocking task marked failed: ``on_kill`` cancels its job.
5. One task of a mapped (``.expand()``) deferrable operator marked failed: its queued job is
   cancelled, its sibling's is not (the guard reads the state of *that* map index).
"""

from __future__ import annotations

import time

import pytest
from deployment import AirflowDeployment
from scenario_helpers import (
    BLOCKING,
    BLOCKING_TIMEOUT,
    CANCELLED,
    DEFERRED,
    FANOUT_2,
    NOT_CANCELLABLE,
    TIMEOUT,
    cancels_of,
    jobs_tagged,
    submits_tagged,
    wait_for_log,
    wait_until,
)

pytestmark = pytest.mark.system


@pytest.mark.topologies("local")
def test_clear_deferred_task_pays_once(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """1. A user clears a deferred task whose job is queued: the run succeeds, one job is billed.

    Clearing a deferred task starts a new try and makes Airflow call the old trigger's
    ``on_kill``, which reads the task's state.  Here the only executor slot is busy (a
    blocking task), so the new try waits and ``on_kill`` sees a task that is not deferred; and
    RunComfy answers the first cancel 503 with ``Retry-After: 12``, so any cancel would land
    only after the new try has re-attached to the job.  Whatever the provider decides (leave
    the job to the new try, or cancel it and let the new try submit anew), the user must get
    a successful task and exactly one billed job -- not a new try that re-attached to a job
    cancelled under it.
    """
    tag = "s7-clear"
    emulator.add_rule(prompt_contains=f"{tag}-queued", queue_seconds=25, run_seconds=1)
    emulator.add_rule(prompt_contains=f"{tag}-busy", queue_seconds=0, run_seconds=8)
    run_id = airflow.trigger_dag(DEFERRED, conf={"prompt": f"{tag}-queued: make it blue"})
    airflow.wait_for_trigger(DEFERRED, run_id, "edit", timeout=60)
    first = airflow.xcom(DEFERRED, run_id, "edit", key="request_id")
    busy = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}-busy: hold the slot"})
    airflow.wait_for_task_state(BLOCKING, busy, "edit", "running", timeout=60)
    emulator.add_fault("cancel", "http", status=503, retry_after=12, times=1, request_id=first)

    t0 = time.monotonic()
    response = airflow.api.post(
        f"/dags/{DEFERRED}/clearTaskInstances",
        json={"dry_run": False, "dag_run_id": run_id, "task_ids": ["edit"], "only_failed": False},
    )
    response.raise_for_status()
    state = airflow.wait_for_run(DEFERRED, run_id, timeout=120)
    record_timing("clear deferred task -> run finished", time.monotonic() - t0)
    assert airflow.wait_for_run(BLOCKING, busy, timeout=60) == "success"

    ti = airflow.task_instance(DEFERRED, run_id, "edit")
    log = airflow.task_log(DEFERRED, run_id, "edit", try_number=2)
    assert state == "success", f"the cleared task {ti['state']}:\n{log}"
    assert ti["try_number"] == 2
    final = airflow.xcom(DEFERRED, run_id, "edit")["request_id"]
    jobs = [job for job in jobs_tagged(emulator, tag) if f"{tag}-queued" in job.input["prompt"]]
    assert [job.request_id for job in jobs if job.phase != "cancelled"] == [final]  # one job billed
    if final == first:
        outcome = "re-attached to the queued job"
        assert f"Re-attaching to RunComfy request {first} of an earlier try" in log, log
    else:
        outcome = "submitted anew after the queued job was cancelled"
        assert len(jobs) == 2 and emulator.job(first).phase == "cancelled"
    print(f"clearing a deferred task whose job was queued: the new try {outcome}")


def test_mark_deferred_task_failed_cancels_its_job(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    """2. A user marks deferred tasks failed: the trigger cancels a queued job, reports a running one.

    Three tasks, marked failed one after the other: a queued job on a freshly started
    triggerer (its first ``on_kill`` waits seconds for Airflow's task-state API), a running
    job (RunComfy cannot cancel it: said so), and a queued job whose first cancel RunComfy
    answers 503 with ``Retry-After: 2`` (the cancel is retried 2 s later).  In each case the cancel must reach RunComfy,
    although Airflow 3.3.2 cancels the trigger's task again while ``on_kill`` runs.
    """
    tag = "s8-kill"
    emulator.add_rule(prompt_contains=f"{tag}-queued", queue_seconds=120, run_seconds=1)
    emulator.add_rule(prompt_contains=f"{tag}-running", queue_seconds=0, run_seconds=120)
    for name in airflow.triggerer_names:  # fresh triggerer processes: nothing warmed up before
        airflow.restart_triggerer(name)
    kinds = ("queued", "running", "queued-503")
    runs = {
        kind: airflow.trigger_dag(DEFERRED, conf={"prompt": f"{tag}-{kind}: make it blue"}) for kind in kinds
    }
    request_ids = {}
    for kind, run_id in runs.items():
        airflow.wait_for_trigger(DEFERRED, run_id, "edit", timeout=60)
        request_ids[kind] = airflow.xcom(DEFERRED, run_id, "edit", key="request_id")
    assert [emulator.job(request_ids[kind]).phase for kind in kinds] == [
        "in_queue",
        "in_progress",
        "in_queue",
    ]
    emulator.add_fault(
        "cancel", "http", status=503, retry_after=2, times=1, request_id=request_ids["queued-503"]
    )

    for kind, run_id in runs.items():
        t0 = time.monotonic()
        marked = airflow.set_task_state(DEFERRED, run_id, "edit", "failed")
        assert [ti["state"] for ti in marked] == ["failed"]

        def cancel_answered(rid: str = request_ids[kind]) -> bool:
            return any(e.status_code == 202 for e in cancels_of(emulator, [rid]))

        wait_until(cancel_answered, 30, f"a cancel of the {kind} job to reach RunComfy")
        record_timing(f"mark deferred task failed -> cancel received ({kind} job)", time.monotonic() - t0)

    phases = {kind: emulator.job(rid).phase for kind, rid in request_ids.items()}
    assert phases == {"queued": "cancelled", "running": "in_progress", "queued-503": "cancelled"}
    wait_for_log(airflow, DEFERRED, runs["queued"], f"{request_ids['queued']} {CANCELLED}")
    wait_for_log(airflow, DEFERRED, runs["running"], f"{request_ids['running']} {NOT_CANCELLABLE}")
    wait_for_log(airflow, DEFERRED, runs["queued-503"], f"{request_ids['queued-503']} {CANCELLED}")
    for run_id in runs.values():
        assert airflow.wait_for_run(DEFERRED, run_id, timeout=60) == "failed"
        assert airflow.task_instance(DEFERRED, run_id, "edit")["state"] == "failed"
    assert [len(cancels_of(emulator, [request_ids[kind]])) for kind in kinds] == [1, 1, 2]
    assert len(submits_tagged(emulator, tag)) == len(kinds)


def test_timeout_cancels_the_job(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """3. timeout=5 on 60 s jobs: the task fails naming the timeout; the queued job is cancelled."""
    emulator.add_rule(prompt_contains="s7-queued", queue_seconds=60, run_seconds=1)
    emulator.add_rule(prompt_contains="s7-running", queue_seconds=0, run_seconds=60)
    cases = {
        ("deferred", "queued"): (TIMEOUT, "s7-queued deferred"),
        ("deferred", "running"): (TIMEOUT, "s7-running deferred"),
        ("blocking", "queued"): (BLOCKING_TIMEOUT, "s7-queued blocking"),
    }
    t0 = time.monotonic()
    runs = {
        case: airflow.trigger_dag(dag_id, conf={"prompt": prompt}) for case, (dag_id, prompt) in cases.items()
    }
    for case, run_id in runs.items():
        dag_id = cases[case][0]
        assert airflow.wait_for_run(dag_id, run_id, timeout=120) == "failed", case
        record_timing(f"timeout=5, {case[0]}, {case[1]} job -> task failed", time.monotonic() - t0)
        ti = airflow.task_instance(dag_id, run_id, "edit")
        assert ti["state"] == "failed" and ti["try_number"] == 1
        request_id = airflow.xcom(dag_id, run_id, "edit", key="request_id")
        log = airflow.task_log(dag_id, run_id, "edit")
        assert f"RunComfy request {request_id} did not finish within timeout=5 s" in log, log
        assert "JobTimeoutError" in log, log
        if case[1] == "queued":
            assert f"{request_id} {CANCELLED}" in log, log
            assert emulator.job(request_id).phase == "cancelled"
        else:
            assert f"{request_id} {NOT_CANCELLABLE}" in log, log
            assert emulator.job(request_id).phase == "in_progress"
        assert len(cancels_of(emulator, [request_id])) == 1
    assert emulator.journal.count("submit") == len(cases)


def test_mark_blocking_task_failed_cancels_its_job(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    """4. A user marks a task failed while it polls in the worker: on_kill cancels the job."""
    tag = "s8-blocking-kill"
    emulator.add_rule(prompt_contains=tag, queue_seconds=120, run_seconds=1)
    run_id = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag}: make it blue"})
    airflow.wait_for_task_state(BLOCKING, run_id, "edit", "running", timeout=60)
    request_id = wait_until(
        lambda: next((e.request_id for e in submits_tagged(emulator, tag)), None), 30, "the submit"
    )
    wait_for_log(airflow, BLOCKING, run_id, f"RunComfy request {request_id} is in_queue")  # polling now

    t0 = time.monotonic()
    assert [ti["state"] for ti in airflow.set_task_state(BLOCKING, run_id, "edit", "failed")] == ["failed"]
    wait_until(lambda: cancels_of(emulator, [request_id]), 30, "the cancel from on_kill")
    record_timing("mark blocking task failed -> cancel received", time.monotonic() - t0)
    assert emulator.job(request_id).phase == "cancelled"
    wait_for_log(
        airflow,
        BLOCKING,
        run_id,
        f"Cancelling because the task was killed. RunComfy request {request_id} {CANCELLED}",
    )
    assert airflow.wait_for_run(BLOCKING, run_id, timeout=60) == "failed"
    ti = airflow.task_instance(BLOCKING, run_id, "edit")
    assert ti["state"] == "failed" and ti["try_number"] == 1  # a user's "failed" is not retried
    assert len(submits_tagged(emulator, tag)) == 1
    assert len(cancels_of(emulator, [request_id])) == 1


def test_mark_mapped_deferred_task_failed_cancels_only_its_job(
    airflow: AirflowDeployment, emulator, record_timing
) -> None:
    """5. A user marks map index 1 of a mapped deferred task failed: its job is cancelled, map 0's is not.

    Both jobs are held in RunComfy's queue by an emulator rule until the test releases them, so
    both are cancellable throughout: only the guard's reading of each task's own state (Airflow
    answers ``edit_1``, not ``edit``) decides which is cancelled. Map 0 then finishes normally.
    """
    tag = "s9-mapped-kill"
    emulator.add_rule(prompt_contains=tag, hold=True)
    run_id = airflow.trigger_dag(FANOUT_2, conf={"prompt": f"{tag}: make it blue"})
    request_ids = {}
    for map_index in (0, 1):
        airflow.wait_for_trigger(FANOUT_2, run_id, "edit", map_index=map_index, timeout=90)
        request_ids[map_index] = airflow.xcom(FANOUT_2, run_id, "edit", key="request_id", map_index=map_index)
    assert [emulator.job(request_ids[i]).phase for i in (0, 1)] == ["in_queue", "in_queue"]

    t0 = time.monotonic()
    marked = airflow.set_task_state(FANOUT_2, run_id, "edit", "failed", map_index=1)
    assert [(ti["map_index"], ti["state"]) for ti in marked] == [(1, "failed")]
    wait_until(
        lambda: any(e.status_code == 202 for e in cancels_of(emulator, [request_ids[1]])),
        60,
        "the cancel of map index 1's job to reach RunComfy",
    )
    record_timing("mark mapped deferred task failed -> cancel received", time.monotonic() - t0)
    wait_for_log(airflow, FANOUT_2, run_id, f"{request_ids[1]} {CANCELLED}", map_index=1)
    assert emulator.job(request_ids[1]).phase == "cancelled"

    # The sibling is untouched: still deferred, its job still queued, no cancel sent for it.
    assert airflow.task_instance(FANOUT_2, run_id, "edit", map_index=0)["state"] == "deferred"
    assert emulator.job(request_ids[0]).phase == "in_queue"
    assert cancels_of(emulator, [request_ids[0]]) == []

    assert emulator.release(request_ids[0]) == [request_ids[0]]
    airflow.wait_for_task_state(FANOUT_2, run_id, "edit", "success", map_index=0, timeout=120)
    assert airflow.wait_for_run(FANOUT_2, run_id, timeout=60) == "failed"  # one mapped task failed
    assert airflow.xcom(FANOUT_2, run_id, "edit", map_index=0)["request_id"] == request_ids[0]
    assert cancels_of(emulator, [request_ids[0]]) == []  # never, over the sibling's whole life
    assert len(cancels_of(emulator, [request_ids[1]])) == 1
    assert len(submits_tagged(emulator, tag)) == 2
