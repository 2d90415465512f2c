"""Airflow's defer/resume race (issue 20): paid jobs that end as failed tasks, on stock intervals.

One command starts a real Airflow deployment on 127.0.0.1 (``tests/system/deployment.py``) on
Airflow's DEFAULT scheduler, worker and triggerer intervals (``AIRFLOW_DEFAULT_INTERVALS``),
the RunComfy emulator in this process, and runs ``runcomfy_defer_race_<batch>``
(``tests/system/dags/runcomfy_defer_race.py``: deferrable ``FluxKontextProEditOperator`` tasks,
``retries=0``, 1 s polls) until ``--tasks`` tasks ran, each job's length drawn evenly from
``--low``..``--high`` seconds. It prints, per topology (``tests/system/deployment_race.py``):

- tasks, and tasks that **failed although their job succeeded** (billed);
- the scheduler's "state mismatch" lines;
- **exposed** tasks: the job ended before the scheduler took the task's defer exit -- an unheld
  trigger would have resumed the task inside the race window;
- the resume latency (job end to task end; mean, p95, max): what the guard costs.

``--guard off`` runs the same with the provider's guard disabled (``RUNCOMFY_RESUME_GUARD=off``
in the triggerer; a switch for this benchmark only), so that the figure is shown to be exercised.

Examples::

    .venv/bin/python bench/defer_race.py --topology local --tasks 300
    .venv/bin/python bench/defer_race.py --topology local --tasks 300 --guard off
    .venv/bin/python bench/defer_race.py --topology celery --tasks 300

A measurement, not a test: nothing fails. Only 127.0.0.1 is contacted; every wait is bounded
(``--max-minutes``) and the deployment is stopped at the end.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "system"))

from deployment import AIRFLOW_DEFAULT_INTERVALS, AirflowDeployment  # noqa: E402
from deployment_race import MISMATCH, RaceReport, mismatch_lines, plan_jobs, read_race  # noqa: E402

from airflow_provider_runcomfy.emulator.server import RunComfyEmulator  # noqa: E402

DAGS = REPO / "tests" / "system" / "dags"
BATCHES = (12, 50)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def wait_for_run(deployment: AirflowDeployment, dag_id: str, run_id: str, give_up: float) -> str:
    """The run's end state; an API server slow to answer on a loaded machine is asked again."""
    while time.monotonic() < give_up + 60:
        try:
            state = deployment.dag_run(dag_id, run_id)["state"]
        except httpx.TransportError:
            continue
        if state in ("success", "failed"):
            return str(state)
        time.sleep(2)
    return "unfinished"


#: The trigger's line when it holds an outcome back (``triggers/_base.py``): the seconds it adds.
HELD = re.compile(rb"handing the outcome to Airflow in ([0-9.]+) s")


def held_seconds(logs: Path) -> list[float]:
    """The seconds each held outcome waited, from the task logs (the triggers' parts) of the deployment."""
    found: list[float] = []
    for path in logs.rglob("*"):
        if path.is_file():
            found += [float(m) for m in HELD.findall(path.read_bytes())]
    return found


def run_topology(args: argparse.Namespace, topology: str) -> RaceReport:
    """Start a deployment, run DAG runs until ``args.tasks`` tasks ran (or time is up), read the race."""
    total = RaceReport()
    with RunComfyEmulator(queue_seconds=0, run_seconds=1) as emulator:
        env = {**emulator.airflow_conn_env(), **AIRFLOW_DEFAULT_INTERVALS}
        if args.guard == "off":
            env["RUNCOMFY_RESUME_GUARD"] = "off"
        deployment = AirflowDeployment(DAGS, env, parallelism=args.parallelism, topology=topology)
        with deployment:
            deployment.wait_for_dag(f"runcomfy_defer_race_{args.batch}", timeout=180)
            give_up = time.monotonic() + args.max_minutes * 60
            try:
                run_until(args, deployment, emulator, topology, total, give_up)
            except KeyboardInterrupt:  # Ctrl-C: report what ran so far
                print(
                    f"[{topology}, guard {args.guard}] interrupted; reporting the finished runs", flush=True
                )
            total.mismatch_lines = mismatch_lines(deployment)
            total.held_seconds = held_seconds(deployment.home / "logs")
            total.other_mismatch_lines = mismatch_lines(deployment, MISMATCH) - total.mismatch_lines
    return total


def run_until(
    args: argparse.Namespace,
    deployment: AirflowDeployment,
    emulator: RunComfyEmulator,
    topology: str,
    total: RaceReport,
    give_up: float,
) -> None:
    """DAG runs one after the other until ``args.tasks`` tasks ran or ``give_up`` passed."""
    dag_id = f"runcomfy_defer_race_{args.batch}"
    run = 0
    while total.tasks < args.tasks and time.monotonic() < give_up:
        tag = f"bench-{topology}-{args.guard}-{run}"
        plan_jobs(emulator, tag, args.batch, args.low, args.high, seed=args.seed + run)
        run_id = deployment.trigger_dag(dag_id, conf={"tag": tag})
        state = wait_for_run(deployment, dag_id, run_id, give_up)
        report = read_race(deployment, emulator, dag_id, run_id, tag)
        total.add(report)
        print(
            f"[{topology}, guard {args.guard}] run {run}: {state}, {report.tasks} tasks, "
            f"{report.succeeded} succeeded, {len(report.failed_while_paid)} failed while paid, "
            f"{report.exposed} exposed",
            flush=True,
        )
        run += 1


def describe(topology: str, args: argparse.Namespace, report: RaceReport) -> str:
    lag = report.resume_seconds
    exposure = report.exposure_seconds
    window = report.window_seconds
    held = report.held_seconds
    return "\n".join(
        [
            f"## {topology}, guard {args.guard}, parallelism {args.parallelism}, jobs {args.low:g}-{args.high:g} s",
            f"tasks: {report.tasks}  succeeded: {report.succeeded}  submits: {report.submits}",
            f"failed while their job succeeded: {len(report.failed_while_paid)}",
            f"scheduler 'state mismatch' lines of the race (executor said success): {report.mismatch_lines}",
            f"other 'state mismatch' lines (a workload failed before running; nothing paid): "
            f"{report.other_mismatch_lines}",
            f"exposed (job ended before the scheduler took the defer exit): {report.exposed}"
            + (
                f", by up to {max(exposure):.1f} s (mean {statistics.mean(exposure):.1f} s)"
                if exposure
                else ""
            ),
            "race window, submit -> scheduler took the defer exit: "
            + (
                f"mean {statistics.mean(window):.1f} s, p95 {percentile(window, 0.95):.1f} s, max {max(window):.1f} s"
                if window
                else "n/a"
            ),
            f"outcomes held back by the guard: {len(held)}"
            + (
                f", by mean {statistics.mean(held):.1f} s, p95 {percentile(held, 0.95):.1f} s, max {max(held):.1f} s"
                if held
                else ""
            ),
            "resume latency, job end -> task end (executor-slot queueing included): "
            + (
                f"mean {statistics.mean(lag):.1f} s, p95 {percentile(lag, 0.95):.1f} s, max {max(lag):.1f} s"
                if lag
                else "n/a"
            ),
            *(f"  failed: {line}" for line in report.failed_while_paid[:20]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topology", choices=("local", "celery", "both"), default="local")
    parser.add_argument(
        "--tasks", type=int, default=300, help="tasks per topology (rounded up to whole runs)"
    )
    parser.add_argument("--batch", type=int, choices=BATCHES, default=50, help="tasks per DAG run")
    parser.add_argument("--guard", choices=("on", "off"), default="on")
    parser.add_argument("--low", type=float, default=1.0, help="shortest job, seconds")
    parser.add_argument("--high", type=float, default=20.0, help="longest job, seconds")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--max-minutes", type=float, default=40.0, help="per topology")
    args = parser.parse_args()
    topologies = ("local", "celery") if args.topology == "both" else (args.topology,)
    for topology in topologies:
        report = run_topology(args, topology)
        print(describe(topology, args, report), flush=True)


if __name__ == "__main__":
    main()
