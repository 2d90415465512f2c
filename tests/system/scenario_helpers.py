"""What the RunComfy system scenarios share: their DAG ids, waits, and readings of the emulator.

One deployment per topology for every ``test_runcomfy_*.py`` scenario (``deployment.py``,
127.0.0.1 only) with **one executor slot** (``parallelism=1``), and the session's RunComfy
emulator (a thread of this process on 127.0.0.1) as the ``runcomfy_default`` connection
(``conftest.py``'s ``airflow`` fixture; ``test_batch_scenarios.py`` shares it).  The DAGs are
in ``dags/runcomfy_scenarios.py``; each test gives its jobs their length with an emulator rule
matching a tag in the run's ``prompt``, and reads what RunComfy received from the emulator's
journal: submits (what is paid for), status/result polls, cancels.  What the executor did is
read from the supervisors' workloads (``worker_parts``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import deployment_base
import pytest
from deployment import AirflowDeployment, DeploymentError, Workload

#: DAGs of ``dags/runcomfy_scenarios.py``.
FANOUT_2, FANOUT_10, FANOUT_20 = "runcomfy_fanout_2", "runcomfy_fanout_10", "runcomfy_fanout_20"
FANOUT_50 = "runcomfy_fanout_50"
DEFERRED, BLOCKING = "runcomfy_deferred", "runcomfy_blocking"
TIMEOUT, BLOCKING_TIMEOUT = "runcomfy_timeout", "runcomfy_blocking_timeout"
DEFERRED_RETRY = "runcomfy_deferred_retry"

#: The map index of a fan-out task, from its input image URL (``dags/runcomfy_scenarios.py``).
IMAGE_INDEX = re.compile(r"/system/(\d+)\.png$")
CANCELLED = "was cancelled; it will not be billed"
NOT_CANCELLABLE = "could not be cancelled: it is already running or finished"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds."""
    try:
        return deployment_base.wait_until(predicate, timeout, interval, what)
    except DeploymentError as exc:
        message = str(exc)
    pytest.fail(message)


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
    """The ``edit`` task's log (worker and triggerer parts) once it contains ``text``.

    A try that has not started yet has no log (the REST API answers 404): that is waited
    out like a log without ``text``, so a test can wait for what a retry will say.
    """
    found: dict[str, str] = {"log": ""}

    def logged() -> bool:
        try:
            found["log"] = airflow.task_log(dag_id, run_id, "edit", try_number, map_index)
        except DeploymentError as exc:
            found["log"] = f"(no log yet: {exc})"
            return False
        return text in found["log"]

    deadline = time.monotonic() + timeout
    while not logged():
        if time.monotonic() >= deadline:
            pytest.fail(f"{text!r} not in the log of {dag_id}/{run_id} after {timeout:.0f}s:\n{found['log']}")
        time.sleep(0.5)  # poll interval of a condition wait with a deadline, not a synchronisation
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


def lose_worker(
    airflow: AirflowDeployment,
    dag_id: str,
    run_id: str,
    record_timing: Any,
    task_id: str = "edit",
    timeout: float = 120.0,
) -> float:
    """SIGKILL the worker running the task, start a Celery worker again; wait for the next try.

    ``AirflowDeployment.kill_worker``: nothing reports the death; the scheduler notices the
    missing task heartbeats and schedules the retry.  Returns the monotonic time of the kill.
    """
    t0 = time.monotonic()
    worker = airflow.kill_worker(dag_id, run_id, task_id)
    assert worker in (*airflow.worker_names, "local")
    if worker != "local":
        airflow.start_worker(worker)  # back to two workers; the retry may run on either

    def next_try() -> dict[str, Any] | None:
        ti = airflow.task_instance(dag_id, run_id, task_id)
        return ti if ti["try_number"] >= 2 else None

    wait_until(
        next_try, timeout, "the scheduler to notice the lost worker and schedule a retry", interval=0.5
    )
    record_timing("worker SIGKILL -> noticed, try 2 scheduled", time.monotonic() - t0)
    return t0


def second_try_reattached(airflow: AirflowDeployment, dag_id: str, run_id: str, reattached: str) -> Any:
    """The ``edit`` task's second try, which logged ``reattached`` and submitted nothing; its TI."""
    ti = airflow.task_instance(dag_id, run_id, "edit")
    assert ti["try_number"] == 2
    log = airflow.task_log(dag_id, run_id, "edit", try_number=2)
    assert reattached in log and "Submitted RunComfy request" not in log, log
    return ti
