"""Batch at scale: N images through ``RunComfyBatchOperator`` vs the mapped pattern, in a real deployment.

One command starts a real Airflow deployment on 127.0.0.1 (``tests/system/deployment.py``:
API server, scheduler with the LocalExecutor, DAG processor, triggerer) and the RunComfy
emulator in this process (jobs of ``--job-seconds``, no queue), then runs, one after the other:

1. ``bench_batch``: one ``RunComfyBatchOperator`` over ``--n`` inputs (a JSON-lines file),
   ``max_in_flight=--max-in-flight``, outputs copied to a temp folder;
2. ``bench_mapped``: ``NanoBananaEditOperator.partial(...).expand(...)`` over ``--mapped-n``
   inputs (the pattern the batch operator replaces), also copying outputs.

For each it prints: wall (DAG run start to end), the RunComfy-bound ideal
(ceil(N / max_in_flight) x job time; the mapped pattern has no bound, so its ideal is one
job time), their ratio, Airflow CPU-s per item (every process of the deployment, children
included), worker-slot-s per item (the supervisors' own account of each task workload),
accepted submits, metadata DB rows added (all tables) and the triggerer's peak RSS.

Examples::

    .venv/bin/python bench/batch_scale.py                       # N=10,000, 500 in flight, 10 s jobs
    .venv/bin/python bench/batch_scale.py --n 2000 --mapped-n 200

A measurement, not a test: nothing fails. Only 127.0.0.1 is contacted; every wait is
bounded (``--max-minutes``) and the deployment is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "system"))

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
    db_rows: int
    db_tables: dict[str, int]
    triggerer_rss: int
    workloads: int

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


def table_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}


def run_one(deployment: Any, emu: Any, dag_id: str, n: int, ideal: float, max_minutes: float) -> Figures:
    cpu = CpuMeter(deployment)
    before_rows = table_rows(deployment.home / "airflow.db")
    before_submits = sum(1 for e in emu.journal.of("submit") if e.status_code == 200)
    workloads_before = len(deployment.workloads())
    rss = RssWatch(deployment)
    rss.start()
    deployment.wait_for_dag(dag_id)
    cpu_before = cpu.total()
    run_id = deployment.trigger_dag(dag_id)
    state = deployment.wait_for_run(dag_id, run_id, timeout=max_minutes * 60)
    cpu_after = cpu.total()
    rss.stop.set()
    rss.join()
    run = deployment.dag_run(dag_id, run_id)
    wall = _epoch(run["end_date"]) - _epoch(run["start_date"])
    time.sleep(3)  # the last workload's "finished" line reaches the scheduler log
    workloads = deployment.workloads()[workloads_before:]
    after_rows = table_rows(deployment.home / "airflow.db")
    grown = {
        t: after_rows[t] - before_rows.get(t, 0) for t in after_rows if after_rows[t] != before_rows.get(t, 0)
    }
    return Figures(
        name=dag_id,
        n=n,
        state=state,
        wall=wall,
        ideal=ideal,
        cpu=cpu_after - cpu_before,
        slot=sum(w.duration for w in workloads),
        submits=sum(1 for e in emu.journal.of("submit") if e.status_code == 200) - before_submits,
        db_rows=sum(grown.values()),
        db_tables=grown,
        triggerer_rss=rss.peak,
        workloads=len(workloads),
    )


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="items through the batch operator")
    parser.add_argument("--max-in-flight", type=int, default=500)
    parser.add_argument("--job-seconds", type=float, default=10.0)
    parser.add_argument(
        "--mapped-n", type=int, default=300, help="items through the mapped pattern (0: skip)"
    )
    parser.add_argument("--poll", type=float, default=2.0, help="poll_interval of both")
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    args = parser.parse_args()

    from deployment import AirflowDeployment

    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    work = Path(tempfile.mkdtemp(prefix="runcomfy-batch-bench-"))
    dags = work / "dags"
    dags.mkdir()
    (dags / "bench_dags.py").write_text(DAG_SOURCE)
    inputs = work / "inputs.jsonl"
    with inputs.open("w") as file:
        for n in range(args.n):
            item = {
                "prompt": f"warm light {n}",
                "image_urls": [f"https://images.example.com/bench/{n:05d}.png"],
            }
            file.write(json.dumps(item) + "\n")
    print(f"work folder: {work}")
    with RunComfyEmulator(queue_seconds=0.0, run_seconds=args.job_seconds, image_long_side=64) as emu:
        env = {
            **emu.airflow_conn_env(),
            "BENCH_OUT": str(work / "out"),
            "BENCH_INPUTS": str(inputs),
            "BENCH_MAX_IN_FLIGHT": str(args.max_in_flight),
            "BENCH_POLL": str(args.poll),
            "BENCH_MAPPED_N": str(args.mapped_n),
            "AIRFLOW__CORE__MAX_MAP_LENGTH": str(max(1024, args.mapped_n)),
            "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": "100000",
        }
        deployment = AirflowDeployment(dags, env, parallelism=args.parallelism)
        deployment.start()
        try:
            results = []
            ideal = math.ceil(args.n / args.max_in_flight) * args.job_seconds
            print(
                f"bench_batch: N={args.n:,}, max_in_flight={args.max_in_flight}, jobs of {args.job_seconds:.0f} s ..."
            )
            results.append(run_one(deployment, emu, "bench_batch", args.n, ideal, args.max_minutes))
            if args.mapped_n:
                print(f"bench_mapped: N={args.mapped_n:,} ...")
                results.append(
                    run_one(
                        deployment, emu, "bench_mapped", args.mapped_n, args.job_seconds, args.max_minutes
                    )
                )
        finally:
            deployment.stop()
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
            f"{figures.name}: {figures.workloads} task workloads; DB rows added by table: {figures.db_tables}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
