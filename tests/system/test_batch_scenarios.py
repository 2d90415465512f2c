"""``RunComfyBatchOperator`` in a real Airflow deployment: marked failed, worker and triggerer killed.

The RunComfy scenarios' deployment (``conftest.py``'s ``airflow`` fixture: one executor slot,
the session's emulator as ``runcomfy_default``, fast orphan and heartbeat settings); the DAG is
``dags/runcomfy_batch_scenarios.py`` (100 jobs in flight, one quick retry). Each test tags its
prompts so that an emulator rule sets its jobs' length and the journal tells its submits apart.

1. Marked failed while deferred: the trigger cancels every queued job of the batch.
2. The worker lost (``kill -9``) while it copies outputs, on both topologies, 1,000 items:
   the retry resumes; exactly N submits, every output kept once. ``local``: the task's
   supervisor and task process; ``celery``: the whole Celery worker running the task (then
   started again). Either way nothing reports the death: the scheduler notices the missing
   task heartbeats after ``task_instance_heartbeat_timeout`` (30 s here).
3. The task process SIGKILLed while a submit is on the wire: that item is ``unknown`` and not
   paid for again; every other item once.
4. The triggerer SIGKILLed mid-batch, a new one started: exactly N submits, every output once.

Scenarios 1, 3 and 4 run on ``local`` only, at N=200 (``RUNCOMFY_BATCH_SYSTEM_N``); the
triggerer kill on both topologies is ``test_runcomfy_restarts.py``'s. Scenario 2 runs at
``RUNCOMFY_BATCH_SYSTEM_KILL_N`` items (default 1,000, issue 12) on every topology.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from deployment import AirflowDeployment
from scenario_helpers import lose_worker, wait_until

pytestmark = pytest.mark.system

DAG_ID = "runcomfy_batch_system"
#: Items of the local-only scenarios; ``RUNCOMFY_BATCH_SYSTEM_N=2000`` runs them at 2,000.
N = int(os.environ.get("RUNCOMFY_BATCH_SYSTEM_N", "200"))
#: Items of the worker-loss scenario, on both topologies (issue 12: 1,000).
KILL_N = int(os.environ.get("RUNCOMFY_BATCH_SYSTEM_KILL_N", "1000"))
#: The DAG's ``max_in_flight``: the DAG file reads the same variable from its environment,
#: which the deployment's components inherit from this process.
MAX_IN_FLIGHT = int(os.environ.get("RUNCOMFY_BATCH_SYSTEM_MAX_IN_FLIGHT", "100"))


#: The emulator's phases of a job that has ended.
FINAL = ("succeeded", "failed", "cancelled")


def inputs(tag: str, count: int = N) -> list[dict[str, Any]]:
    return [
        {"prompt": f"{tag} item {n:04d}", "image_urls": [f"https://images.example.com/system/{n:04d}.png"]}
        for n in range(count)
    ]


def run_batch(
    airflow: AirflowDeployment,
    emulator: Any,
    tag: str,
    output_dir: Path,
    count: int = N,
    queue_seconds: float = 0,
    run_seconds: float = 1,
    submitted: int = 0,
) -> str:
    """Trigger a batch of ``count`` items tagged ``tag``, whose jobs take this long; its run id.

    ``submitted``: return once RunComfy has accepted that many of the batch's submits.
    """
    emulator.add_rule(prompt_contains=tag, queue_seconds=queue_seconds, run_seconds=run_seconds)
    run_id = airflow.trigger_dag(DAG_ID, conf={"inputs": inputs(tag, count), "output_dir": str(output_dir)})
    wait_until(
        lambda: sum(accepted_submits(emulator, tag).values()) >= submitted,
        600,
        f"{submitted} of {count} items submitted",
    )
    return run_id


def accepted_submits(emulator: Any, tag: str) -> Counter[str]:
    """Accepted submits per item prompt: a count above 1 is a second payment."""
    return Counter(
        e.json["prompt"]
        for e in emulator.journal.of("submit")
        if isinstance(e.json, dict) and tag in e.json.get("prompt", "") and e.status_code in (200, None)
    )


def manifest(out: Path) -> list[dict[str, Any]]:
    (path,) = out.rglob("manifest.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs_kept(out: Path) -> list[Path]:
    return [p for p in out.rglob("outputs/*") if not p.name.endswith(".part")]


@pytest.mark.topologies("local")
def test_marking_the_batch_failed_cancels_every_queued_job(
    airflow: AirflowDeployment, emulator: Any, tmp_path: Path
) -> None:
    """1. Marked failed while deferred: the trigger cancels every queued job of the batch."""
    tag = "sys-cancel"
    run_id = run_batch(airflow, emulator, tag, tmp_path, count=30, queue_seconds=300)
    airflow.wait_for_trigger(DAG_ID, run_id, "batch", timeout=120)
    jobs = [j.request_id for j in emulator.jobs if tag in j.input["prompt"]]
    assert len(jobs) == min(30, MAX_IN_FLIGHT)

    airflow.set_task_state(DAG_ID, run_id, "batch", "failed")

    wait_until(lambda: emulator.journal.count("cancel") >= len(jobs), 60, "the trigger to cancel every job")
    assert {emulator.job(r).phase for r in jobs} == {"cancelled"}
    assert sum(accepted_submits(emulator, tag).values()) == len(jobs)  # nothing more was submitted


def test_a_worker_lost_while_copying_outputs_resumes_without_paying_twice(
    airflow: AirflowDeployment, emulator: Any, tmp_path: Path, record_timing: Any
) -> None:
    """2. A 1,000-item batch whose worker dies mid-copy: the retry resumes; N submits, N outputs.

    Once every item is submitted, a delay fault holds one copy in the worker, and the worker is
    lost with the task (``AirflowDeployment.kill_worker``): nothing reports it, the scheduler
    notices the missing heartbeats and schedules the retry, which reads the ledger in
    ``output_dir``: no item is submitted again, the outputs copied before the kill are kept.
    The last ten jobs run 5 s, so copies are still to come when the fault is set. (Copies go on
    beside the worker's submits, so a kill before the last submit could land on one: its item
    would be ``unknown``, paid once and never again, which is a different scenario.)
    """
    tag = "sys-killcopy"
    t_start = time.monotonic()
    emulator.add_rule(prompt_contains=f"{tag} item {(KILL_N - 10) // 10:03d}", run_seconds=5)
    run_id = run_batch(airflow, emulator, tag, tmp_path, count=KILL_N, submitted=KILL_N)
    wait_until(lambda: emulator.journal.count("file") >= KILL_N // 2, 60, "half of the outputs copied")
    emulator.add_fault("file", "delay", seconds=60, times=1)
    wait_until(
        lambda: any(e.fault == "delay" for e in emulator.journal.of("file")),
        120,
        "a copy held by the delay fault",
    )
    copied_at_kill = emulator.journal.count("file")
    # The task and its supervisor (or its whole Celery worker), mid-copy.
    t_kill = lose_worker(airflow, DAG_ID, run_id, record_timing, task_id="batch", timeout=180)
    assert airflow.wait_for_run(DAG_ID, run_id, timeout=600) == "success"
    t_end = time.monotonic()

    ti = airflow.task_instance(DAG_ID, run_id, "batch")
    assert ti["try_number"] == 2  # the lost worker did cost a try; the retry resumed
    submits = accepted_submits(emulator, tag)
    assert submits == Counter({f"{tag} item {n:04d}": 1 for n in range(KILL_N)})
    records = manifest(tmp_path)
    statuses = Counter(r["status"] for r in records)
    assert statuses == Counter({"succeeded": KILL_N}), statuses
    kept = outputs_kept(tmp_path)
    assert len(kept) == KILL_N and {p.name for p in kept} == {
        Path(r["stored"][0]["uri"]).name for r in records
    }

    # Outputs kept before the kill are not fetched again: only the killed part's copies repeat.
    fetches = emulator.journal.count("file")
    assert KILL_N <= fetches <= KILL_N + MAX_IN_FLIGHT, fetches

    record_timing("output fetches before the kill", copied_at_kill, unit="")
    record_timing("output fetches in all", fetches, unit="")
    record_timing("worker SIGKILL -> batch done", t_end - t_kill)
    record_timing("submits", sum(submits.values()), unit="")
    record_timing("outputs kept", len(kept), unit="")
    record_timing("unknown items", statuses["unknown"], unit="")
    record_timing(f"{KILL_N}-item batch, trigger -> success", t_end - t_start)


@pytest.mark.topologies("local")
def test_a_worker_killed_during_a_submit_reports_that_item_unknown_and_pays_no_item_twice(
    airflow: AirflowDeployment, emulator: Any, tmp_path: Path
) -> None:
    """3. The task process SIGKILLed while a submit is on the wire: that item is ``unknown``.

    Its job may exist, so the retry does not submit it again (the manifest tells the user to
    look in the dashboard); every other item is submitted once.
    """
    tag = "sys-killsubmit"
    run_id = run_batch(airflow, emulator, tag, tmp_path, run_seconds=2, submitted=N // 4)
    emulator.add_fault("submit", "delay", seconds=20, times=1)
    held = wait_until(
        lambda: next((e for e in emulator.journal.of("submit") if e.fault == "delay"), None),
        120,
        "a submit held by the delay fault",
    )
    airflow.kill_task(DAG_ID, run_id, "batch")

    assert airflow.wait_for_run(DAG_ID, run_id, timeout=300 + N // 2) == "success"
    submits = accepted_submits(emulator, tag)
    assert max(submits.values()) == 1  # no item paid twice
    records = manifest(tmp_path)
    by_prompt = {r["input"]["prompt"]: r for r in records}
    assert by_prompt[held.json["prompt"]]["status"] == "unknown"
    assert "dashboard" in by_prompt[held.json["prompt"]]["error"]
    unknown = [r for r in records if r["status"] == "unknown"]
    # Only submits on the wire at the kill can be unknown (at most submit_concurrency of them).
    assert 1 <= len(unknown) <= 8
    assert all(r["status"] == "succeeded" for r in records if r["status"] != "unknown")
    assert len(outputs_kept(tmp_path)) == N - len(unknown)


@pytest.mark.topologies("local")
def test_a_triggerer_killed_mid_batch_loses_nothing_and_submits_nothing(
    airflow: AirflowDeployment, emulator: Any, tmp_path: Path
) -> None:
    """4. The triggerer SIGKILLed mid-batch, a new one started: N submits, every output once."""
    tag = "sys-killtrig"
    # Jobs longer than this deployment's defer/resume hold (5 s): the batch defers between refills
    # instead of waiting in place, so there is a trigger to lose.
    run_id = run_batch(airflow, emulator, tag, tmp_path, run_seconds=8, submitted=N // 3)
    airflow.wait_for_trigger(DAG_ID, run_id, "batch", timeout=120)
    airflow.kill_triggerer()
    # The jobs in flight finish while no triggerer watches (the emulator says when they have).
    watched = [j.request_id for j in emulator.jobs if tag in str(j.input.get("prompt"))]
    wait_until(
        lambda: all((job := emulator.job(r)) is not None and job.phase in FINAL for r in watched),
        120,
        "the jobs in flight to finish unwatched",
    )
    airflow.start_triggerer()

    assert airflow.wait_for_run(DAG_ID, run_id, timeout=300 + N // 2) == "success"
    assert accepted_submits(emulator, tag) == Counter({f"{tag} item {n:04d}": 1 for n in range(N)})
    records = manifest(tmp_path)
    assert [r["status"] for r in records] == ["succeeded"] * N
    assert len(outputs_kept(tmp_path)) == N
