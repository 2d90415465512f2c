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

Scenarios (every wait is bounded; no test asserts how long anything took: the durations are
recorded with ``record_timing`` and printed in the session summary):

1. 10 deferrable tasks whose jobs RunComfy holds in its queue (an emulator rule) until the test
   releases them, with one executor slot: all 10 are deferred at once (had a waiting task held
   the slot, the second could not even have started), and each task's worker parts (submit,
   resume) lie outside the time its job was held and ran; workloads never overlap.
2. Worker-slot-seconds of a deferred job against a blocking one (``local`` only: a figure
   about Airflow itself): the blocking task's one workload spans its job, the deferred
   task's two parts lie before and after it.
3. 50 mapped tasks in a 3-slot pool that counts deferred tasks, their jobs released three at
   a time: exactly 3 jobs in flight each round, never a 4th submit, 50 submits in all.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

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
    wait_until,
    worker_parts,
)

pytestmark = pytest.mark.system

#: Two workloads of one executor slot "overlap" only by more than this (log clock jitter).
OVERLAP_TOLERANCE = 0.1


def held_jobs(emulator, tag: str) -> list[Any]:
    """The test's jobs that RunComfy (the emulator's ``hold`` rule) still keeps in its queue."""
    return [job for job in jobs_tagged(emulator, tag) if job.phase == "in_queue"]


def outside(parts: list[Any], start: float, end: float) -> bool:
    """Whether no worker part was open between ``start`` and ``end`` (epoch seconds)."""
    return all(part.end <= start or part.start >= end for part in parts)


def test_waiting_jobs_hold_no_worker_slot(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """1. One slot, 10 tasks whose jobs RunComfy holds: all deferred at once, no slot held while waiting."""
    tag, dag_id, count = "s1-no-slot", FANOUT_10, 10
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=5.0)
    airflow.wait_for_dag(dag_id)
    t0 = time.monotonic()
    run_id = airflow.trigger_dag(dag_id, conf={"prompt": f"{tag}: make it blue"})

    def all_deferred() -> list[dict[str, Any]] | None:
        tis = task_instances(airflow, dag_id, run_id)
        deferred = [ti for ti in tis if ti["state"] == "deferred"]
        return tis if len(deferred) == count else None

    # With one executor slot, 10 tasks deferred at once: none held the slot while it waited.
    tis = wait_until(all_deferred, 300, f"all {count} mapped tasks deferred at once (one slot)")
    record_timing(f"{count} tasks submitted and deferred, parallelism=1", time.monotonic() - t0)
    held = held_jobs(emulator, tag)
    assert len(held) == count == len(submits_tagged(emulator, tag))
    # Each task's first worker part has ended (its process is gone) before the jobs are let go.
    wait_until(
        lambda: (
            (found := worker_parts_so_far(airflow, tis))
            and all(len(ws) == 1 for ws in found.values())
            and found
        ),
        60,
        "the executor to log the 10 submit-and-defer parts",
    )
    released_at = time.time()  # before the release: the jobs run after this instant
    assert emulator.release() == [job.request_id for job in held]

    state = airflow.wait_for_run(dag_id, run_id, timeout=300)
    record_timing(f"{count} deferred jobs, parallelism=1: trigger -> run done", time.monotonic() - t0)
    assert state == "success", airflow._run_details(dag_id, run_id)
    tis = task_instances(airflow, dag_id, run_id)
    assert sorted(ti["map_index"] for ti in tis if ti["state"] == "success") == list(range(count))
    assert len(submits_tagged(emulator, tag)) == count
    assert emulator.journal.count("cancel") == 0

    # The executor's own account: each task ran twice in the slot (submit, resume), no two
    # workloads ever overlapped, and no worker part was open while the task's job was held or ran.
    parts = worker_parts(airflow, (ti["id"] for ti in tis))
    states = {ti_id: [w.final_state for w in ws] for ti_id, ws in parts.items()}
    assert all(s == ["deferred", "success"] for s in states.values()), states
    # This run's workloads: the deployment (and its logs) is shared with the other test_runcomfy_*
    # modules, whose killed workers and restarted components leave workloads of their own there.
    ours = [(w.start, w.end) for ws in parts.values() for w in ws]
    assert len(ours) == 2 * count
    assert max_overlap(ours, OVERLAP_TOLERANCE) == 1
    jobs = {map_index_of(job): job for job in jobs_tagged(emulator, tag)}
    for ti in tis:
        job = jobs[ti["map_index"]]
        assert outside(parts[ti["id"]], released_at, job.finished_at), (ti["map_index"], parts[ti["id"]])
    slot_seconds = [sum(w.duration for w in ws) for ws in parts.values()]
    record_timing("worker-slot-seconds per deferred job (mean)", statistics.mean(slot_seconds))
    record_timing("worker-slot-seconds per deferred job (max)", max(slot_seconds))


def worker_parts_so_far(airflow: AirflowDeployment, tis: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The executor workloads logged so far for these task instances (none yet: an empty list)."""
    ids = {ti["id"] for ti in tis}
    parts: dict[str, list[Any]] = {ti_id: [] for ti_id in ids}
    for workload in airflow.workloads():
        if workload.ti_id in ids:
            parts[workload.ti_id].append(workload)
    return parts


@pytest.mark.topologies("local")
def test_slot_seconds_deferred_against_blocking(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """2. The same 10 s job, deferrable and blocking: when each held an executor slot.

    Both jobs are held in RunComfy's queue until the deferred task's submit part has left
    the slot and the blocking task is polling; then they run 10 s. The blocking task's
    workload spans its job; the deferred task's parts lie before and after its job.
    """
    tag, job_seconds = "s2-slot-seconds", 10.0
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=job_seconds)
    t0 = time.monotonic()
    runs = {DEFERRED: airflow.trigger_dag(DEFERRED, conf={"prompt": f"{tag} {DEFERRED}: make it blue"})}
    airflow.wait_for_trigger(DEFERRED, runs[DEFERRED], "edit", timeout=120)
    deferred_ti = airflow.task_instance(DEFERRED, runs[DEFERRED], "edit")
    wait_until(
        lambda: worker_parts_so_far(airflow, [deferred_ti])[deferred_ti["id"]],
        60,
        "the deferred task's submit part to leave the slot",
    )
    runs[BLOCKING] = airflow.trigger_dag(BLOCKING, conf={"prompt": f"{tag} {BLOCKING}: make it blue"})
    airflow.wait_for_task_state(BLOCKING, runs[BLOCKING], "edit", "running", timeout=120)
    wait_until(lambda: len(held_jobs(emulator, tag)) == 2, 60, "both jobs submitted and held")
    released_at = time.time()
    assert len(emulator.release()) == 2
    for dag_id, run_id in runs.items():
        assert airflow.wait_for_run(dag_id, run_id, timeout=180) == "success", dag_id
    record_timing("one deferred and one blocking 10 s job", time.monotonic() - t0)

    seconds, jobs = {}, {}
    for dag_id, run_id in runs.items():
        ti = airflow.task_instance(dag_id, run_id, "edit")
        parts = worker_parts(airflow, [ti["id"]])[ti["id"]]
        seconds[dag_id] = sum(w.duration for w in parts)
        jobs[dag_id] = (parts, emulator.job(airflow.xcom(dag_id, run_id, "edit", key="request_id")))
        record_timing(
            f"worker-slot-seconds of a {job_seconds:.0f} s job, {dag_id} ({len(parts)} part(s))",
            seconds[dag_id],
        )
    assert len(submits_tagged(emulator, tag)) == 2
    # Blocking: one workload, open over the whole job. Deferred: two parts, neither open during it.
    (blocking,), blocking_job = jobs[BLOCKING]
    assert blocking.start <= released_at and blocking.end >= blocking_job.finished_at
    deferred_parts, deferred_job = jobs[DEFERRED]
    assert [w.final_state for w in deferred_parts] == ["deferred", "success"]
    assert outside(deferred_parts, released_at, deferred_job.finished_at), deferred_parts
    record_timing("slot-seconds saved by deferring a 10 s job", seconds[BLOCKING] - seconds[DEFERRED])


def test_fifty_mapped_tasks_in_a_pool(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """3. 50 mapped edits in a 3-slot pool that counts deferred tasks: never more than 3 jobs in flight.

    A pool with ``include_deferred`` holds a slot from queued to done, deferral included, so
    it bounds the jobs in flight -- RunComfy's concurrency -- to its size. RunComfy holds each
    job in its queue until the test releases it: each round, exactly 3 jobs (fewer at the end)
    are in flight and no 4th task has submitted; then the round's jobs are released.
    """
    tag, count, slots = "s3-fifty", 50, 3
    emulator.add_rule(prompt_contains=tag, hold=True, run_seconds=0.5)
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
    released = 0
    rounds = 0
    while released < count and rounds < count:  # bounded: each round releases at least one job
        expected = min(slots, count - released)

        def in_flight_now(n: int = expected) -> list[Any] | None:
            jobs = held_jobs(emulator, tag)
            return jobs if len(jobs) >= n else None

        held = wait_until(
            in_flight_now,
            180,
            f"{expected} jobs in flight (round {rounds + 1})",
        )
        assert len(held) == expected, f"{len(held)} jobs in flight with a pool of {slots}"
        assert len(submits_tagged(emulator, tag)) == released + expected  # no task beyond the pool paid
        released += len(emulator.release())
        rounds += 1
    state = airflow.wait_for_run(FANOUT_50, run_id, timeout=300)
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
    in_flight = max_overlap((job.created_at, job.finished_at) for job in jobs_tagged(emulator, tag))
    assert in_flight == slots

    record_timing(f"{count} mapped tasks, pool of {slots} (include_deferred), parallelism=1", elapsed)
    record_timing(f"submits for {count} tasks", len(submits), unit="")
    record_timing("polls per job, status+result (mean)", statistics.mean(polls), unit="")
    record_timing("polls per job, status+result (max)", max(polls), unit="")
    record_timing(f"most jobs in flight at once (pool of {slots})", in_flight, unit="")
    parts = worker_parts(airflow, (ti["id"] for ti in tis))
    record_timing(
        "worker-slot-seconds per job (mean)",
        statistics.mean(sum(w.duration for w in ws) for ws in parts.values()),
    )
