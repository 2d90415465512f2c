"""Issues #5 and #12: the RunComfy operators in a real Airflow deployment, against the emulator.

One deployment per topology for every scenario (``deployment.py``, 127.0.0.1 only) with
**one executor slot** (``parallelism=1``), and the session's RunComfy emulator (a thread of
this process on 127.0.0.1) as the ``runcomfy_default`` connection.  The topologies
(``topology`` parameter, see ``conftest.py``):

- ``local``: API server, scheduler with the LocalExecutor, DAG processor, triggerer; SQLite.
- ``celery``: the same with the CeleryExecutor, a Redis broker, PostgreSQL (metadata DB and
  Celery result backend), two Celery workers and two triggerers.

Most scenarios run on both and assert the same outcome; where Celery behaves differently
(a scheduler restart does not touch a task running on a worker; with two triggerers a dead
one's triggers move to the other without a restart) the test says so and asserts what is
right there.  A few scenarios about Airflow itself rather than the deployment run on
``local`` only (``@pytest.mark.topologies``), to keep the Celery share of CI small.  The DAGs are in
``dags/runcomfy_scenarios.py``; each test gives its jobs their length with an emulator rule
matching a tag in the run's ``prompt``, and reads what RunComfy received from the emulator's
journal: submits (what is paid for), status/result polls, cancels.

How the scenarios know what the executor did: every task process runs in an executor slot
under the task SDK supervisor, which logs ``Workload finished ... duration=...`` with the task
instance id when the process is done (``AirflowDeployment.workloads()``).  A deferrable task
has one such workload per worker part (submit-and-defer, then resume); a blocking task has
one for the whole job.  Those intervals are the slot occupation measured by the worker
itself, so "never more than one task at a time" and "slot-seconds per job" are read from
them, not inferred from task instance dates (which span the whole deferral).

Scenarios (in file order; every wait is bounded):

1. 10 deferrable jobs of 20 s with one slot: done in well under 200 s, each task seen
   ``deferred`` while its job is ``in_progress``, executor workloads never overlap.
2. Worker-slot-seconds of a deferred job against a blocking one of the same length.
3. 50 mapped tasks in a 3-slot pool that counts deferred tasks: 50 submits, polls per job,
   never more jobs in flight than pool slots.
4. ``kill -9`` of the triggerer with 10 tasks deferred, then a new triggerer: all succeed,
   no cancel, no extra submit.
5. ``kill -9`` of the scheduler (and its executor workers) with a task deferred and a
   blocking one polling: both succeed; the blocking task's next try re-attaches.
6. Triggers moved to another triggerer (HA): the ``on_kill`` Airflow calls on the old one
   does not cancel the jobs.
7. A deferred task cleared by a user while the slot is busy and the cancel slow: the run
   succeeds and exactly one job is billed.
8. A deferred task marked failed: the trigger cancels its job (queued: cancelled; running:
   not cancellable, said so), also from a fresh triggerer and through a retried cancel.
9. ``timeout=5`` on 60 s jobs: the task fails naming the timeout and the job is cancelled
   (queued) or said not cancellable (running), deferred and blocking.
10. A blocking task marked failed: ``on_kill`` cancels its job.
11. A blocking task whose process is SIGKILLed after submitting: the retry re-attaches;
    one submit.
"""

from __future__ import annotations

import re
import signal
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from deployment import AirflowDeployment, Workload

pytestmark = pytest.mark.system

FANOUT_2, FANOUT_10, FANOUT_20 = "runcomfy_fanout_2", "runcomfy_fanout_10", "runcomfy_fanout_20"
FANOUT_50 = "runcomfy_fanout_50"
DEFERRED, BLOCKING = "runcomfy_deferred", "runcomfy_blocking"
TIMEOUT, BLOCKING_TIMEOUT = "runcomfy_timeout", "runcomfy_blocking_timeout"

#: The map index of a fan-out task, from its input image URL (``dags/runcomfy_scenarios.py``).
IMAGE_INDEX = re.compile(r"/system/(\d+)\.png$")
#: Two workloads of one executor slot "overlap" only by more than this (log clock jitter).
OVERLAP_TOLERANCE = 0.1
CANCELLED = "was cancelled; it will not be billed"
NOT_CANCELLABLE = "could not be cancelled: it is already running or finished"


# ---------------------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def task_instances(airflow: AirflowDeployment, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    response = airflow.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    response.raise_for_status()
    return response.json()["task_instances"]


def jobs_tagged(emulator, tag: str) -> list[Any]:
    """The emulator's jobs whose prompt carries ``tag`` (a test's own jobs)."""
    return [job for job in emulator.jobs if tag in str(job.input.get("prompt", ""))]


def submits_tagged(emulator, tag: str) -> list[Any]:
    return [e for e in emulator.journal.of("submit") if tag in str((e.json or {}).get("prompt", ""))]


def map_index_of(job) -> int:
    urls = job.input.get("image_urls") or [job.input.get("image_url", "")]
    match = IMAGE_INDEX.search(urls[0])
    assert match, urls
    return int(match.group(1))


def cancels_of(emulator, request_ids: Iterable[str]) -> list[Any]:
    ids = set(request_ids)
    return [e for e in emulator.journal.of("cancel") if e.request_id in ids]


def worker_parts(airflow: AirflowDeployment, ti_ids: Iterable[str]) -> dict[str, list[Workload]]:
    """The executor workloads of these (finished) task instances, by task instance id.

    The supervisor logs a workload once the task process has exited, a moment after the
    task reported its final state: wait (briefly) until each task's last workload is logged.
    """
    ids = set(ti_ids)

    def logged() -> dict[str, list[Workload]] | None:
        parts: dict[str, list[Workload]] = {ti_id: [] for ti_id in ids}
        for workload in airflow.workloads():
            if workload.ti_id in ids:
                parts[workload.ti_id].append(workload)
        done = all(ws and ws[-1].final_state not in ("deferred", "running") for ws in parts.values())
        return parts if done else None

    return wait_until(logged, 30, "the executor workloads of the finished tasks", interval=0.5)


def max_overlap(intervals: Iterable[tuple[float, float]], tolerance: float = 0.0) -> int:
    """The most intervals open at one instant (each shrunk by ``tolerance`` at both ends)."""
    edges = []
    for start, end in intervals:
        if end - start > 2 * tolerance:
            edges += [(start + tolerance, 1), (end - tolerance, -1)]
    open_now = peak = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # ends before starts
        open_now += step
        peak = max(peak, open_now)
    return peak


def wait_for_log(
    airflow: AirflowDeployment,
    dag_id: str,
    run_id: str,
    text: str,
    timeout: float = 30,
    try_number: int = 1,
    map_index: int = -1,
) -> str:
    """The ``edit`` task's log (worker and triggerer parts) once it contains ``text``."""
    found: dict[str, str] = {}

    def logged() -> bool:
        found["log"] = airflow.task_log(dag_id, run_id, "edit", try_number, map_index)
        return text in found["log"]

    deadline = time.monotonic() + timeout
    while not logged():
        if time.monotonic() >= deadline:
            pytest.fail(f"{text!r} not in the log of {dag_id}/{run_id} after {timeout:.0f}s:\n{found['log']}")
        time.sleep(0.5)
    return found["log"]


def on_kill_returned(trigger_log: Path) -> bool:
    """Whether a trigger log shows Airflow invoking the trigger's ``on_kill`` and the trigger ending after it."""
    try:
        text = trigger_log.read_text(errors="replace")
    except OSError:
        return False
    invoked = text.find("Trigger cancelled by user action, invoking on_kill")
    return invoked >= 0 and text.find('"trigger completed"', invoked) > invoked


def state_store(airflow: AirflowDeployment, dag_id: str, run_id: str, key: str) -> Any:
    """A task_state_store entry of the ``edit`` task (Airflow 3.3 REST), or None."""
    response = airflow.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/edit/state-store/{key}")
    return response.json()["value"] if response.status_code == 200 else None


# -------------------------------------------------------------------------------------- scenarios


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


def test_triggerer_killed_and_restarted(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """4. kill -9 a triggerer while 10 tasks are deferred; the triggers resume elsewhere, mid-job.

    ``local``: the only triggerer; a new one is started and takes its triggers over.
    ``celery`` (two triggerers): the one running the first task's trigger is killed and *not*
    restarted until the other has taken over every trigger it ran (rows it claims with
    ``SELECT ... FOR UPDATE SKIP LOCKED`` once the dead one's heartbeat is older than the
    health-check threshold); the triggers the survivor already ran stay where they are.
    """
    tag, count = "s4-triggerer-restart", 10
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=35)
    run_id = airflow.trigger_dag(FANOUT_10, conf={"prompt": f"{tag}: make it blue"})
    old = {
        i: airflow.wait_for_trigger(FANOUT_10, run_id, "edit", map_index=i, timeout=90) for i in range(count)
    }
    jobs = jobs_tagged(emulator, tag)
    assert len(jobs) == count and {job.phase for job in jobs} == {"in_progress"}
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
        assert set(phases.values()) == {"in_progress"}, phases  # each wait resumed mid-job
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
    """5. kill -9 the scheduler (and with it the LocalExecutor's workers) with one task deferred
    and one blocking task polling in a worker; a new scheduler finishes both, one submit each.

    The deferred task needs no scheduler while it waits.  ``local``: the blocking task's
    supervisor dies with the scheduler; the new scheduler resets the orphaned task instance and
    its next try re-attaches to the job instead of submitting again.  ``celery``: the task runs
    on a Celery worker the scheduler does not own: it goes on polling, the new scheduler adopts
    it (by its Celery task id), and it finishes in its first try.
    """
    tag = "s5-scheduler"
    emulator.add_rule(prompt_contains=f"{tag}-deferred", queue_seconds=0, run_seconds=20)
    emulator.add_rule(prompt_contains=f"{tag}-blocking", queue_seconds=0, run_seconds=20)
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
    """6. A hung triggerer's triggers move to a second triggerer; the old one's on_kill cancels nothing.

    Airflow 3.3.2 calls ``on_kill`` when a triggerer finds that triggers it runs are now
    assigned to another triggerer.  The trigger reads the task's state (mapped tasks here, so
    the per-map-index lookup is exercised), sees it still deferred and leaves the job alone.
    The jobs stay queued through the whole move, so a wrong cancel would succeed (and show in
    the journal).
    """
    tag, count = "s6-moved", 2
    emulator.add_rule(prompt_contains=tag, queue_seconds=40, run_seconds=1)
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

        assert airflow.wait_for_run(FANOUT_2, run_id, timeout=90) == "success"
        record_timing("triggers moved -> tasks success", time.monotonic() - t0)
    finally:
        airflow.kill_component("triggerer-2", signal.SIGTERM, timeout=30)
    assert cancels_of(emulator, request_ids) == []
    assert len(submits_tagged(emulator, tag)) == count


@pytest.mark.topologies("local")
def test_clear_deferred_task_pays_once(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """7. A user clears a deferred task whose job is queued: the run succeeds, one job is billed.

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
    """8. A user marks deferred tasks failed: the trigger cancels a queued job, reports a running one.

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
    """9. timeout=5 on 60 s jobs: the task fails naming the timeout; the queued job is cancelled."""
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
    """10. A user marks a task failed while it polls in the worker: on_kill cancels the job."""
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


def test_worker_death_retry_reattaches(airflow: AirflowDeployment, emulator, record_timing) -> None:
    """11. SIGKILL the task process after it submitted: the retry re-attaches, one submit in all."""
    tag = "s9-worker-death"
    emulator.add_rule(prompt_contains=tag, queue_seconds=0, run_seconds=15)
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

    assert airflow.wait_for_run(BLOCKING, run_id, timeout=120) == "success"
    record_timing("task process SIGKILL -> retry succeeded", time.monotonic() - t0)
    ti = airflow.task_instance(BLOCKING, run_id, "edit")
    assert ti["try_number"] == 2
    log = airflow.task_log(BLOCKING, run_id, "edit", try_number=2)
    assert f"Re-attaching to RunComfy request {request_id} of an earlier try" in log, log
    assert "Submitted RunComfy request" not in log, log
    assert len(submits_tagged(emulator, tag)) == 1  # exactly one submit for the task instance
    assert cancels_of(emulator, [request_id]) == []
    assert emulator.job(request_id).phase == "succeeded"
    assert airflow.xcom(BLOCKING, run_id, "edit")["request_id"] == request_id
    parts = worker_parts(airflow, [ti["id"]])[ti["id"]]
    assert [w.final_state for w in parts][-1] == "success"
