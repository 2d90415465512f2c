"""Batch at scale: N images through ``RunComfyBatchOperator`` vs the mapped pattern, in a real deployment.

One command starts a real Airflow deployment on 127.0.0.1 (``tests/system/deployment.py``:
API server, scheduler with the LocalExecutor, DAG processor, triggerer) and the RunComfy
emulator in this process (jobs of ``--job-seconds``, no queue), runs one small task to warm
the deployment up (``warm_up``: the API server's first task pays a one-time build of its
Execution API), then runs, one after the other:

1. ``bench_batch``: one ``RunComfyBatchOperator`` over ``--n`` inputs (a JSON-lines file),
   ``max_in_flight=--max-in-flight``, outputs copied to a temp folder;
2. ``bench_mapped``: ``NanoBananaEditOperator.partial(...).expand(...)`` over ``--mapped-n``
   inputs (the pattern the batch operator replaces), also copying outputs.

For each it prints: wall (DAG run start to end), the RunComfy-bound ideal
(ceil(N / max_in_flight) x job time; the mapped pattern has no bound, so its ideal is one
job time), their ratio, Airflow CPU-s per item (every process of the deployment, children
included), worker-slot-s per item (the supervisors' own account of each task workload),
accepted submits, metadata DB rows added (all tables) and the triggerer's peak RSS.

For the batch it also prints what each **worker part** cost (each task process the
LocalExecutor's supervisors forked while the batch ran): CPU-s (exact: the supervisor's
reaped-children time grows by the part's CPU when it ends) and peak RSS (sampled every
0.2 s), as median / 90th percentile / max. ``--n`` takes several sizes (``10000,100000``):
they run one after the other in the same deployment, and the last lines give the ratio of
each per-part figure between the largest and the smallest N (issue 18's target: <= 1.5).

Examples::

    .venv/bin/python bench/batch_scale.py                       # N=10,000, 500 in flight, 10 s jobs
    .venv/bin/python bench/batch_scale.py --n 2000 --mapped-n 200
    .venv/bin/python bench/batch_scale.py --n 10000,100000 --job-seconds 1 --mapped-n 0
    .venv/bin/python bench/batch_scale.py --n 2000 --max-in-flight 200 --job-seconds 5 --mapped-n 0 --output-bytes 2000000
    .venv/bin/python bench/batch_scale.py ... --default-intervals   # on Airflow's default intervals

A measurement, not a test: nothing fails. Only 127.0.0.1 is contacted; every wait is
bounded (``--max-minutes``) and the deployment is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "system"))

from deployment_base import AIRFLOW_DEFAULT_INTERVALS, DeploymentError  # noqa: E402

MODEL = "google/nano-banana/edit"

DAG_SOURCE = textwrap.dedent(
    """
    import json, os
    import pendulum
    from airflow.sdk import DAG
    from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
    from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator

    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    OUT = os.environ["BENCH_OUT"]

    with DAG("bench_batch", schedule=None, start_date=START, catchup=False, max_active_tasks=64) as bench_batch:
        RunComfyBatchOperator(
            task_id="batch",
            model_id="google/nano-banana/edit",
            inputs=os.environ["BENCH_INPUTS"],
            output_dir=OUT + "/batch",
            max_in_flight=int(os.environ["BENCH_MAX_IN_FLIGHT"]),
            poll_interval=float(os.environ["BENCH_POLL"]),
        )

    with DAG("bench_warmup", schedule=None, start_date=START, catchup=False) as bench_warmup:
        from airflow.sdk import task

        @task
        def start():  # a task that runs (an EmptyOperator never reaches a worker)
            return None

        start()

    with DAG("bench_mapped", schedule=None, start_date=START, catchup=False, max_active_tasks=1024) as bench_mapped:
        NanoBananaEditOperator.partial(
            task_id="edit",
            prompt="warm light",
            output_dir=OUT + "/mapped",
            poll_interval=float(os.environ["BENCH_POLL"]),
            timeout=3600,
        ).expand(
            image_urls=[f"https://images.example.com/bench/{n:05d}.png" for n in range(int(os.environ["BENCH_MAPPED_N"]))]
        )
    """
)


@dataclass
class Figures:
    name: str
    n: int
    state: str
    wall: float
    ideal: float
    cpu: float
    slot: float
    submits: int
    reads: int  # RunComfy reads (status and result) of the jobs: how well the polls are timed
    db_rows: int
    db_tables: dict[str, int]
    triggerer_rss: int
    workloads: int
    parts: list[tuple[float, int]]  # (CPU-s, peak RSS) of each worker part
    size: int = 0  # the batch's N (``n`` is the items paid for when the run did not finish)
    submit_times: list[float] = dataclass_field(default_factory=list)  # when each accepted submit arrived

    def row(self) -> str:
        return (
            f"| {self.name} | {self.n:,} | {self.state} | {self.wall:.1f} s | {self.ideal:.0f} s | "
            f"{self.wall / self.ideal:.2f} | {self.cpu / self.n:.4f} | {self.slot / self.n:.4f} | "
            f"{self.submits:,} | {self.db_rows:,} | {self.triggerer_rss / 2**20:.0f} MB |"
        )


class CpuMeter:
    """CPU of every process of the deployment: each live one's own time plus its reaped children's.

    A task process's time reaches its supervisor's ``children`` times when it is reaped, so
    summing live processes (self + children) counts every finished process once.
    """

    def __init__(self, deployment: Any) -> None:
        self.deployment = deployment

    def total(self) -> float:
        seconds = 0.0
        for proc in self.deployment.processes():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            seconds += t.user + t.system + t.children_user + t.children_system
        return seconds


class PartWatch(threading.Thread):
    """CPU-s and peak RSS of each task process (worker part) the LocalExecutor's supervisors run.

    A supervisor runs one task process at a time; when it reaps one, its ``children_*`` CPU
    times grow by exactly that process's CPU. The RSS is the largest sample of the child.
    """

    def __init__(self, deployment: Any) -> None:
        super().__init__(daemon=True)
        self.deployment, self.stop = deployment, threading.Event()
        self.parts: list[tuple[float, int]] = []
        self._state: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()
        self.sample()

    def sample(self) -> None:
        for proc in self.deployment.processes():
            try:
                if "LocalExecutor" not in " ".join(proc.cmdline()):
                    continue
                times = proc.cpu_times()
                children = proc.children()
                rss = max((c.memory_info().rss for c in children), default=0)
            except psutil.Error:
                continue
            reaped = times.children_user + times.children_system
            state = self._state.setdefault(proc.pid, {"reaped": reaped, "rss": 0, "child": False})
            if reaped > state["reaped"] and state["child"]:
                self.parts.append((reaped - state["reaped"], state["rss"]))
                state["rss"], state["child"] = 0, False
            state["reaped"] = reaped
            if children:
                state["child"] = True
                state["rss"] = max(state["rss"], rss)


def part_summary(parts: list[tuple[float, int]]) -> dict[str, float]:
    """Median, 90th percentile and max of the parts' CPU-s and peak RSS (MB)."""
    if not parts:
        return {}
    cpu = sorted(p[0] for p in parts)
    rss = sorted(p[1] / 2**20 for p in parts)

    def pick(values: list[float], share: float) -> float:
        return values[min(len(values) - 1, int(share * len(values)))]

    return {
        "parts": len(parts),
        "cpu_median": pick(cpu, 0.5),
        "cpu_p90": pick(cpu, 0.9),
        "cpu_max": cpu[-1],
        "rss_median": pick(rss, 0.5),
        "rss_p90": pick(rss, 0.9),
        "rss_max": rss[-1],
    }


class RssWatch(threading.Thread):
    """Samples the triggerer's RSS (with its TriggerRunner subprocess) while a run goes on."""

    def __init__(self, deployment: Any) -> None:
        super().__init__(daemon=True)
        self.deployment, self.peak, self.stop = deployment, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            proc = self.deployment.procs.get("triggerer")
            if proc is None:
                continue
            try:
                root = psutil.Process(proc.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)


def warm_up(deployment: Any, max_minutes: float) -> None:
    """Run one small task first, so the measured runs start on a deployment that has run a task.

    The API server builds its Execution API on the first task's first call (py-spy: ~4.7 s of
    route and model building on this machine, the task's supervisor waiting for it), once per
    server start. A long-lived deployment has paid it long before a batch; measured without
    this, it was a tenth of a 2,000-item batch's ideal.
    """
    deployment.wait_for_dag("bench_warmup")
    started = time.monotonic()
    state = deployment.wait_for_run(
        "bench_warmup", deployment.trigger_dag("bench_warmup"), timeout=max_minutes * 60
    )
    print(f"warm-up run (one small task): {state} in {time.monotonic() - started:.1f} s", flush=True)


def slot_gaps(submit_times: list[float], max_in_flight: int, job_seconds: float) -> list[float]:
    """How long each place in the window stood empty: from a job's end to the submit that took its place.

    The k-th submit after the first ``max_in_flight`` takes the place of the k-th job to end (jobs
    of ``job_seconds``, no queue: each ends that long after its submit arrived). The mean is what
    the batch adds to every job over the RunComfy-bound ideal.
    """
    ends = sorted(t + job_seconds for t in submit_times)
    return [max(0.0, start - end) for start, end in zip(submit_times[max_in_flight:], ends, strict=False)]


def reads_of(emu: Any) -> int:
    """Status and result requests the emulator has answered so far."""
    return len(emu.journal.of("status")) + len(emu.journal.of("result"))


def table_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}


def run_one(deployment: Any, emu: Any, dag_id: str, n: int, ideal: float, max_minutes: float) -> Figures:
    cpu = CpuMeter(deployment)
    before_rows = table_rows(deployment.home / "airflow.db")
    before_submits = sum(1 for e in emu.journal.of("submit") if e.status_code == 200)
    before_reads = reads_of(emu)
    workloads_before = len(deployment.workloads())
    rss = RssWatch(deployment)
    rss.start()
    parts = PartWatch(deployment)
    parts.start()
    deployment.wait_for_dag(dag_id)
    cpu_before = cpu.total()
    run_id = deployment.trigger_dag(dag_id)
    started = time.time()
    try:
        state = deployment.wait_for_run(dag_id, run_id, timeout=max_minutes * 60)
    except DeploymentError:
        # Not finished within --max-minutes: the figures so far are still printed, marked so
        # (the run's wall is then the time waited, its items the submits made).
        state = f"unfinished after {max_minutes:g} min"
    cpu_after = cpu.total()
    rss.stop.set()
    rss.join()
    time.sleep(1)  # the last part's supervisor reaps it (PartWatch samples that moment)
    parts.stop.set()
    parts.join()
    run = deployment.dag_run(dag_id, run_id)
    end = run.get("end_date")
    wall = _epoch(end) - _epoch(run["start_date"]) if end else time.time() - started
    time.sleep(3)  # the last workload's "finished" line reaches the scheduler log
    workloads = deployment.workloads()[workloads_before:]
    after_rows = table_rows(deployment.home / "airflow.db")
    grown = {
        t: after_rows[t] - before_rows.get(t, 0) for t in after_rows if after_rows[t] != before_rows.get(t, 0)
    }
    accepted = [e.at for e in emu.journal.of("submit") if e.status_code == 200]
    submits = len(accepted) - before_submits
    reads = reads_of(emu) - before_reads
    return Figures(
        name=dag_id,
        n=n if not state.startswith("unfinished") else submits,  # per item: the items paid for so far
        state=state,
        wall=wall,
        ideal=ideal,
        cpu=cpu_after - cpu_before,
        slot=sum(w.duration for w in workloads),
        submits=submits,
        reads=reads,
        submit_times=sorted(accepted[before_submits:]),
        db_rows=sum(grown.values()),
        db_tables=grown,
        triggerer_rss=rss.peak,
        workloads=len(workloads),
        parts=parts.parts,
        size=n,
    )


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", default="10000", help="items through the batch operator; several sizes: 10000,100000"
    )
    parser.add_argument("--max-in-flight", type=int, default=500)
    parser.add_argument("--job-seconds", type=float, default=10.0)
    parser.add_argument(
        "--mapped-n", type=int, default=300, help="items through the mapped pattern (0: skip)"
    )
    parser.add_argument("--poll", type=float, default=2.0, help="poll_interval of both")
    parser.add_argument(
        "--output-bytes",
        type=int,
        default=0,
        help="pad every output file to about this many bytes (issue 18's real image sizes: 2000000)",
    )
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument(
        "--default-intervals",
        action="store_true",
        help="run the deployment on Airflow's default scheduler/heartbeat intervals (not the tuned ones)",
    )
    parser.add_argument("--max-minutes", type=float, default=30.0)
    args = parser.parse_args()

    from deployment import AirflowDeployment

    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    work = Path(tempfile.mkdtemp(prefix="runcomfy-batch-bench-"))
    dags = work / "dags"
    dags.mkdir()
    (dags / "bench_dags.py").write_text(DAG_SOURCE)
    sizes = [int(n) for n in str(args.n).split(",")]
    inputs = work / "inputs.jsonl"
    print(f"work folder: {work}")
    with RunComfyEmulator(queue_seconds=0.0, run_seconds=args.job_seconds, image_long_side=64) as emu:
        if args.output_bytes:
            emu.add_rule(output_bytes=args.output_bytes)  # every job
        env = {
            **emu.airflow_conn_env(),
            "BENCH_OUT": str(work / "out"),
            "BENCH_INPUTS": str(inputs),
            "BENCH_MAX_IN_FLIGHT": str(args.max_in_flight),
            "BENCH_POLL": str(args.poll),
            "BENCH_MAPPED_N": str(args.mapped_n),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, args.mapped_n)),
            "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": "100000",
            **(AIRFLOW_DEFAULT_INTERVALS if args.default_intervals else {}),
        }
        deployment = AirflowDeployment(dags, env, parallelism=args.parallelism)
        deployment.start()
        try:
            warm_up(deployment, args.max_minutes)
            results = []
            for n in sizes:
                write_inputs(inputs, n)
                ideal = math.ceil(n / args.max_in_flight) * args.job_seconds
                print(
                    f"bench_batch: N={n:,}, max_in_flight={args.max_in_flight}, jobs of {args.job_seconds:g} s ...",
                    flush=True,
                )
                results.append(run_one(deployment, emu, "bench_batch", n, ideal, args.max_minutes))
                print(results[-1].row(), flush=True)
            if args.mapped_n:
                print(f"bench_mapped: N={args.mapped_n:,} ...")
                results.append(
                    run_one(
                        deployment, emu, "bench_mapped", args.mapped_n, args.job_seconds, args.max_minutes
                    )
                )
        finally:
            logs = deployment.home / "logs"
            if logs.is_dir():  # kept for reading what each worker part did (the deployment's home goes)
                shutil.copytree(logs, work / "logs", dirs_exist_ok=True)
                print(f"task logs: {work / 'logs'}")
            deployment.stop()
            # The copied outputs go (a 2 MB run leaves 4 GB; a few runs filled this machine's disk);
            # the logs, inputs and DAGs stay for reading.
            shutil.rmtree(work / "out", ignore_errors=True)
    print()
    print(
        "| pattern | N | state | wall | ideal | wall/ideal | Airflow CPU-s/item | worker-slot-s/item | "
        "submits | DB rows added | triggerer peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for figures in results:
        print(figures.row())
    print()
    for figures in results:
        print(
            f"{figures.name}: {figures.workloads} task workloads; {figures.reads / max(1, figures.submits):.2f} "
            f"RunComfy reads per job; DB rows added by table: {figures.db_tables}"
        )
    batches = [f for f in results if f.name == "bench_batch"]
    for figures in batches:
        gaps = sorted(slot_gaps(figures.submit_times, args.max_in_flight, args.job_seconds))
        if gaps:
            print(
                f"bench_batch N={figures.size:,}: a place in the window stood empty between a job's end and the "
                f"next submit {statistics.mean(gaps):.2f} s on average (median {gaps[len(gaps) // 2]:.2f} s, "
                f"p90 {gaps[int(0.9 * len(gaps))]:.2f} s)"
            )
    print()
    print(
        "| N | worker parts | CPU-s per part (median / p90 / max) | peak RSS per part, MB (median / p90 / max) |"
    )
    print("|---|---|---|---|")
    summaries = []
    for figures in batches:
        one = part_summary(figures.parts)
        summaries.append(one)
        if one:
            print(
                f"| {figures.size:,} | {one['parts']:.0f} | {one['cpu_median']:.2f} / {one['cpu_p90']:.2f} / "
                f"{one['cpu_max']:.2f} | {one['rss_median']:.0f} / {one['rss_p90']:.0f} / {one['rss_max']:.0f} |"
            )
    for figures in batches:  # which part is the largest (the first of a try, the last, ...)
        if figures.parts:
            shown = ", ".join(f"{cpu:.1f}/{rss / 2**20:.0f}" for cpu, rss in figures.parts)
            print(f"N={figures.size:,}: each part in the order it ended (CPU-s/peak RSS MB): {shown}")
    if len(batches) > 1 and summaries[0] and summaries[-1]:
        small, large = summaries[0], summaries[-1]
        print(
            f"ratio per part, N={batches[-1].size:,} / N={batches[0].size:,}: CPU median "
            f"{large['cpu_median'] / small['cpu_median']:.2f}, CPU p90 {large['cpu_p90'] / small['cpu_p90']:.2f}, "
            f"peak RSS median {large['rss_median'] / small['rss_median']:.2f}, "
            f"peak RSS max {large['rss_max'] / small['rss_max']:.2f}"
        )
    return 0


def write_inputs(path: Path, n: int) -> None:
    with path.open("w") as file:
        for k in range(n):
            item = {
                "prompt": f"warm light {k}",
                "image_urls": [f"https://images.example.com/bench/{k:05d}.png"],
            }
            file.write(json.dumps(item) + "\n")


if __name__ == "__main__":
    sys.exit(main())
