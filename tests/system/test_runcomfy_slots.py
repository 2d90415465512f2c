"""Issues #5 and #12: deferral and executor slots, in a real Airflow deployment against the emulator.

The RunComfy scenarios' deployment and emulator, per topology (one executor slot; see
``scenario_helpers.py``).

The topologies (``topology`` parameter, see ``conftest.py``):

- ``local``: API server, scheduler with the LocalExecutor, DAG processor, triggerer; SQLite.
- ``celery``: the same with the CeleryExecutor, a Redis broker, PostgreSQL (metadata DB and
  Celery result backend), two Celery workers and two triggerers.

How the scenarios know what the executor did: every task process runs in an executor slot
under the task SDK supervisor, which logs ``Workload finished ... duration=...`` with the task
instance id when the process is done (``AirflowDeployment.workloads()``).  A deferrable task
has one such workload per worker part (submit-and-defer, then resume); a blocking task has
one for the whole job.  Those intervals are the slot occupation measured by the worker
itself, so "never more than one task at a time" and "slot-seconds per job" are read from
them, not inferred from task instance dates (which span the whole deferral).

Scenarios (every wait is bounded):

1. 10 deferrable jobs of 20 s with one slot: done in well under 200 s, each task seen
   ``deferred`` while its job is ``in_progress``, executor workloads never overlap.
2. Worker-slot-seconds of a deferred job against a blocking one of the same length
   (``local`` only: a figure about Airflow itself, not the deployment).
3. 50 mapped tasks in a 3-slot pool that counts deferred tasks: 50 submits, polls per job,
   never more jobs in flight than pool slots.
"""

from __future__ import annotations

import statistics
import time

import pytest
from deployment import AirflowDeployment
from scenario_helpers import (
    BLOCKING,
    DEFERRED,
    FANOUT_10,
    FANOUT_50,
    cancels_of,
    jobs_tagged,
    map_index_of,
    max_overlap,
    submits_tagged,
    task_instances,
    worker_parts,
)

pytestmark = pytest.mark.system

#: Two workloads of one executor slot "overlap" only by more than this (log clock jitter).
OVERLAP_TOLERANCE = 0.1


def test_waiting_jobs_hold_no_worker_slot(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """1. One slot, 10 tasks whose jobs take 20 s each: done in well under 10 x 20 s.

    Jobs long against a worker part (a part takes 1-4 s on a busy 2-core machine, more on
    Celery: a trip through Redis and a pool process), so that the bounds below separate
    "held the slot for the job" from "held it for two short parts" on any machine.
    """
    tag, dag_id, count, job_seconds = "s1-no-slot", FANOUT_10, 10, 20.0
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=job_seconds)
    airflow.wait_for_dag(dag_id)
    t0 = time.monotonic()
    run_id = airflow.trigger_dag(dag_id, conf={"prompt": f"{tag}: make it blue"})

    # Watch the task instances and the emulator's jobs side by side until the run ends.
    deferred_while_running: set[int] = set()
    peak_deferred = 0
    deadline = t0 + 180
    while (state := airflow.dag_run(dag_id, run_id)["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, airflow._run_details(dag_id, run_id)
        phases = {map_index_of(job): job.phase for job in jobs_tagged(emulator, tag)}
        deferred = [
            ti["map_index"] for ti in task_instances(airflow, dag_id, run_id) if ti["state"] == "deferred"
        ]
        peak_deferred = max(peak_deferred, len(deferred))
        deferred_while_running.update(i for i in deferred if phases.get(i) == "in_progress")
        time.sleep(0.4)
    elapsed = time.monotonic() - t0
    record_timing(f"{count} deferred jobs x {job_seconds:.0f} s, parallelism=1", elapsed)
    record_timing(f"most task instances deferred at once (of {count})", peak_deferred, unit="")

    assert state == "success", airflow._run_details(dag_id, run_id)
    tis = task_instances(airflow, dag_id, run_id)
    assert sorted(ti["map_index"] for ti in tis if ti["state"] == "success") == list(range(count))
    # Each task was seen deferred while the emulator said its job was running.
    assert deferred_while_running == set(range(count))
    # Had each task held the only slot while its job ran, the jobs would have run one after
    # the other: count x job_seconds at least, and never two deferred at once.  (The run takes
    # about job_seconds + 2 x count worker parts.)
    assert peak_deferred >= 2
    assert elapsed < count * job_seconds * 0.6, f"{elapsed:.0f}s for {count} jobs of {job_seconds:.0f}s"
    assert len(submits_tagged(emulator, tag)) == count
    assert emulator.journal.count("cancel") == 0

    # The executor's own account: each task ran twice in the slot (submit, resume), briefly,
    # and no two workloads ever overlapped.
    parts = worker_parts(airflow, (ti["id"] for ti in tis))
    states = {ti_id: [w.final_state for w in ws] for ti_id, ws in parts.items()}
    assert all(s == ["deferred", "success"] for s in states.values()), states
    # Every workload of the deployment so far, these 40 included: never two at once.
    assert max_overlap(((w.start, w.end) for w in airflow.workloads()), OVERLAP_TOLERANCE) == 1
    slot_seconds = [sum(w.duration for w in ws) for ws in parts.values()]
    record_timing("worker-slot-seconds per deferred job (mean)", statistics.mean(slot_seconds))
    record_timing("worker-slot-seconds per deferred job (max)", max(slot_seconds))
    # A blocking task would hold the slot for job_seconds at least.  (The first task process
    # of a fresh deployment is slower, hence the mean for the tighter bound.)
    assert statistics.mean(slot_seconds) < job_seconds / 4
    assert max(slot_seconds) < job_seconds


@pytest.mark.topologies("local")
def test_slot_seconds_deferred_against_blocking(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """2. The same 10 s job, deferrable and blocking: how long each held an executor slot."""
    tag, job_seconds = "s2-slot-seconds", 10.0
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=job_seconds)
    t0 = time.monotonic()
    runs = {
        dag_id: airflow.trigger_dag(dag_id, conf={"prompt": f"{tag} {dag_id}: make it blue"})
        for dag_id in (DEFERRED, BLOCKING)
    }
    for dag_id, run_id in runs.items():
        assert airflow.wait_for_run(dag_id, run_id, timeout=120) == "success", dag_id
    record_timing("one deferred and one blocking 10 s job", time.monotonic() - t0)

    seconds = {}
    for dag_id, run_id in runs.items():
        ti = airflow.task_instance(dag_id, run_id, "edit")
        parts = worker_parts(airflow, [ti["id"]])[ti["id"]]
        seconds[dag_id] = sum(w.duration for w in parts)
        record_timing(
            f"worker-slot-seconds of a {job_seconds:.0f} s job, {dag_id} ({len(parts)} part(s))",
            seconds[dag_id],
        )
    assert len(submits_tagged(emulator, tag)) == 2
    # Blocking: the slot is held for the whole job.  Deferred: for the submit and the resume only.
    assert seconds[BLOCKING] >= job_seconds
    assert seconds[DEFERRED] < seconds[BLOCKING] / 2
    record_timing("slot-seconds saved by deferring a 10 s job", seconds[BLOCKING] - seconds[DEFERRED])


def test_fifty_mapped_tasks_in_a_pool(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """3. 50 mapped edits of ~2.5 s in a 3-slot pool that counts deferred tasks.

    Unbounded, about 4 jobs are in flight at once here (the single executor slot submits one
    every ~2 s); a pool with ``include_deferred`` holds a slot from queued to done, deferral
    included, so it bounds the jobs in flight -- RunComfy's concurrency -- to its size.
    """
    tag, count, slots = "s3-fifty", 50, 3
    emulator.add_rule(prompt_contains=tag, queue_seconds=0.5, run_seconds=2.0)
    pool = {
        "name": "runcomfy",
        "slots": slots,
        "description": "RunComfy jobs in flight",
        "include_deferred": True,
    }
    if airflow.api.get("/pools/runcomfy").status_code == 404:
        airflow.api.post("/pools", json=pool).raise_for_status()
    else:
        airflow.api.patch("/pools/runcomfy", json=pool).raise_for_status()

    t0 = time.monotonic()
    run_id = airflow.trigger_dag(FANOUT_50, conf={"prompt": f"{tag}: make it blue"})
    state = airflow.wait_for_run(FANOUT_50, run_id, timeout=400)
    elapsed = time.monotonic() - t0
    assert state == "success", airflow._run_details(FANOUT_50, run_id)
    tis = task_instances(airflow, FANOUT_50, run_id)
    assert sorted(ti["map_index"] for ti in tis if ti["state"] == "success") == list(range(count))

    submits = submits_tagged(emulator, tag)
    request_ids = {e.request_id for e in submits}
    assert len(submits) == count and len(request_ids) == count  # paid for exactly once each
    assert cancels_of(emulator, request_ids) == []
    returned = {airflow.xcom(FANOUT_50, run_id, "edit", map_index=i)["request_id"] for i in range(count)}
    assert returned == request_ids
    polls = [
        emulator.journal.count("status", request_id=rid) + emulator.journal.count("result", request_id=rid)
        for rid in request_ids
    ]
    jobs = jobs_tagged(emulator, tag)
    in_flight = max_overlap((job.created_at, job.finished_at) for job in jobs)
    assert 1 < in_flight <= slots

    record_timing(f"{count} mapped tasks, pool of {slots} (include_deferred), parallelism=1", elapsed)
    record_timing(f"submits for {count} tasks", len(submits), unit="")
    record_timing("polls per job, status+result (mean)", statistics.mean(polls), unit="")
    record_timing("polls per job, status+result (max)", max(polls), unit="")
    record_timing(f"most jobs in flight at once (pool of {slots})", in_flight, unit="")
    parts = worker_parts(airflow, (ti["id"] for ti in tis))
    record_timing(
        "worker-slot-seconds per ~2.5 s job (mean)",
        statistics.mean(sum(w.duration for w in ws) for ws in parts.values()),
    )
