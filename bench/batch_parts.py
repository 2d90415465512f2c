"""What a resumed batch worker part costs in its batch state, at several N: CPU-s and peak RSS per part.

``bench/batch_scale.py`` measures whole worker parts in a real deployment; most of a
part's CPU there is Airflow's (starting the task process, the execution API), the same
at any N. This bench isolates what issue 18 is about -- the part of a worker part that
could grow with N -- with the provider's real code and files:

For each ``--n`` it builds a batch's task folder as it is midway: a JSON-lines inputs file
of N lines and its index (``batch.items.load_items``), a ledger (``batch.ledger``) where
``--done`` of the items succeeded (lean outcomes, one kept copy each; compacted, so they
are in the archive), ``--max-in-flight`` jobs in flight, the next inputs checked and the
rest not yet read. Then it runs ``--parts`` resumed worker parts one after the other, each
in a fresh Python process, each doing what the operator's ``execute_complete`` does with
the batch state: read the inputs forward and the ledger (``archive=False``), record
``wake`` outcomes (a tenth of the window, as the trigger brings them), check the next
inputs (``CHECK_CHUNK``), submit into the room freed (real HTTP to the emulator on
127.0.0.1, request bodies prepared and validated by the real seams), plan the next wait
(window, wake count, expected run time, spend) and compact. It prints, per N, CPU-s
(``time.process_time``, from after the process's imports and a first validation, which
cost the same at any N) and peak RSS (``VmHWM``) of each part, the same process's RSS
before the part, and the ratio of the largest N's figures to the smallest's.

What it leaves out: Airflow (task start, XCom, the trigger), copies of outputs, pre-flight
of input URLs (``preflight="off"``) -- each the same at any N.

Example::

    .venv/bin/python bench/batch_parts.py --n 10000,100000

A measurement, not a test: nothing fails. Only 127.0.0.1 is contacted; every loop is
bounded by ``--parts``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "google/nano-banana/edit"
REPO = Path(__file__).resolve().parents[1]


def peak_rss() -> int:
    """This process's peak RSS in bytes (``VmHWM``: unlike ``ru_maxrss``, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def item(n: int) -> dict[str, Any]:
    return {"prompt": f"warm light {n}", "image_urls": [f"https://images.example.com/bench/{n:06d}.png"]}


def build(work: Path, n: int, done: float, max_in_flight: int, ready: int) -> None:
    """The task folder of a batch midway (see the module's docstring)."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch import ledger as L
    from airflow_provider_runcomfy.batch.items import load_items

    inputs = work / "inputs.jsonl"
    with inputs.open("w") as file:
        for k in range(n):
            file.write(json.dumps(item(k)) + "\n")
    folder = ObjectStoragePath(f"file://{work}/task")
    items = load_items(MODEL, str(inputs), folder)
    finished = int(n * done)
    flying = range(finished, min(n, finished + max_in_flight))
    checked = min(n, finished + max_in_flight + ready)
    ledger = L.Ledger(folder, MODEL)
    events: list[dict[str, Any]] = []
    for k in range(checked):
        key = items.keys[k]
        if k < finished:
            events.append(
                {
                    "key": key,
                    "index": k,
                    "state": L.SUCCEEDED,
                    "request_id": f"req-{k:08d}-0123456789abcdef",
                    "attempt": 1,
                    "outcome": {
                        "status": "succeeded",
                        "outputs": [f"http://127.0.0.1:9/outputs/req-{k:08d}/0.png"],
                        "cost_usd": 0.04,
                        "created_at": "2026-12-07T05:00:00+00:00",
                        "finished_at": "2026-12-07T05:00:01+00:00",
                    },
                    "stored": [
                        {
                            "uri": f"file://{work}/task/outputs/{k:06d}_req-{k:08d}_0.png",
                            "bytes": 9000,
                            "sha256": "0" * 64,
                            "content_type": "image/png",
                        }
                    ],
                }
            )
        elif k in flying:
            events.append(
                {
                    "key": key,
                    "index": k,
                    "state": L.SUBMITTED,
                    "request_id": f"req-{k:08d}-0123456789abcdef",
                    "attempt": 1,
                    "submitted_at": time.time(),
                }
            )
        else:
            events.append({"key": key, "index": k, "state": L.READY})
    ledger.append(events)
    ledger.set_meta(try_number=1, try_id="bench:1", try_started_at=time.time())
    ledger.compact(force=True)


def resume(work: Path, folder: Any, max_in_flight: int, log: Any) -> Any:
    """The batch as a resumed worker part opens it: the inputs read forward, the ledger without its archive."""
    from airflow_provider_runcomfy.batch import ledger as L
    from airflow_provider_runcomfy.batch.engine import BatchRun
    from airflow_provider_runcomfy.batch.items import load_items

    return BatchRun(
        MODEL,
        load_items(MODEL, str(work / "inputs.jsonl"), folder),
        L.Ledger(folder, MODEL).load(archive=False),
        folder,
        max_in_flight=max_in_flight,
        max_output_bytes=1 << 20,
        resubmit_unknown=False,
        log=log,
    )


def part(work: Path, max_in_flight: int, base_url: str, token: str) -> dict[str, float]:
    """One resumed worker part over the batch state in ``work`` (runs in its own process)."""
    import asyncio
    import logging

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch.items import prepare_items
    from airflow_provider_runcomfy.batch.pacing import SubmitPacer
    from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy
    from airflow_provider_runcomfy.models import validate_input
    from airflow_provider_runcomfy.operators.batch import CHECK_CHUNK

    log = logging.getLogger("bench")
    folder = ObjectStoragePath(f"file://{work}/task")
    folder.fs.ls(folder.path)  # fsspec's first use (registries, plugins): the same at any N
    # Imports and the model's validator built once per process: the same at any N, not measured.
    import airflow_provider_runcomfy.batch.window
    import airflow_provider_runcomfy.sources  # noqa: F401

    validate_input(MODEL, item(0))
    rss_base = peak_rss()
    cpu_start = time.process_time()

    run = resume(work, folder, max_in_flight, log)
    wake = run.wake_count()
    run.apply_outcomes(
        [
            {
                "key": key,
                "request_id": request_id,
                "status": "succeeded",
                "created_at": "2026-12-07T05:00:00+00:00",
                "finished_at": "2026-12-07T05:00:01+00:00",
                "cost_usd": 0.04,
            }
            for request_id, key, _ in run.in_flight()[:wake]
        ]
    )
    run.check(
        lambda some: prepare_items(
            MODEL, some, for_submit=False, preflight="off", sign_expiry=None, api_base_url=base_url, log=log
        ),
        validate_input,
        limit=max(CHECK_CHUNK, 2 * max_in_flight),
    )

    async def refill() -> Any:
        async with AsyncRunComfyClient(token, base_url=base_url, retry=RetryPolicy(max_attempts=1)) as client:
            return await run.refill(
                client,
                SubmitPacer(max_concurrency=8, concurrency=8),
                prepare=lambda some: prepare_items(
                    MODEL,
                    some,
                    for_submit=True,
                    preflight="off",
                    sign_expiry=None,
                    api_base_url=base_url,
                    log=log,
                ),
                validate=validate_input,
                may_submit=lambda one, spend: True,
                try_number=1,
            )

    submitted = asyncio.run(refill()).submitted
    plan = (len(run.in_flight()), run.wake_count(), run.expected_seconds(), run.spend(), run.done_count())
    run.ledger.compact()
    return {
        "cpu": time.process_time() - cpu_start,
        "rss_peak": peak_rss(),
        "rss_base": rss_base,
        "outcomes": wake,
        "submitted": submitted,
        "in_flight": plan[0],
        "done": plan[4],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="10000,100000", help="batch sizes, comma-separated")
    parser.add_argument("--done", type=float, default=0.5, help="share of items already succeeded")
    parser.add_argument("--max-in-flight", type=int, default=500)
    parser.add_argument("--parts", type=int, default=5, help="resumed worker parts measured per N")
    parser.add_argument(
        "--child", nargs=4, metavar=("WORK", "MAX_IN_FLIGHT", "BASE_URL", "TOKEN"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        work, max_in_flight, base_url, token = args.child
        print(json.dumps(part(Path(work), int(max_in_flight), base_url, token)))
        return 0

    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    sizes = [int(n) for n in args.n.split(",")]
    results: dict[int, list[dict[str, float]]] = {}
    with RunComfyEmulator(queue_seconds=600.0, run_seconds=1.0) as emu:  # submitted jobs stay queued
        for n in sizes:
            work = Path(tempfile.mkdtemp(prefix=f"runcomfy-batch-parts-{n}-"))
            try:
                started = time.monotonic()
                build(work, n, args.done, args.max_in_flight, ready=2 * args.max_in_flight)
                print(f"N={n:,}: batch state built in {time.monotonic() - started:.1f} s", flush=True)
                results[n] = []
                for k in range(args.parts):
                    out = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--child",
                            str(work),
                            str(args.max_in_flight),
                            emu.base_url,
                            emu.token,
                        ],
                        capture_output=True,
                        text=True,
                        timeout=600,
                        check=True,
                        cwd=REPO,
                    )
                    figures = json.loads(out.stdout.strip().splitlines()[-1])
                    results[n].append(figures)
                    print(
                        f"  part {k + 1}: {figures['cpu']:.3f} CPU-s, peak RSS {figures['rss_peak'] / 2**20:.0f} MB "
                        f"(after imports {figures['rss_base'] / 2**20:.0f} MB), {figures['outcomes']:.0f} outcomes, "
                        f"{figures['submitted']:.0f} submitted, {figures['done']:,.0f} done",
                        flush=True,
                    )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        "| N | parts | CPU-s per part (median) | peak RSS per part (median) | RSS growth over imports (median) |"
    )
    print("|---|---|---|---|---|")
    medians = {}
    for n, parts in results.items():
        cpu = statistics.median(p["cpu"] for p in parts)
        rss = statistics.median(p["rss_peak"] for p in parts) / 2**20
        growth = statistics.median(p["rss_peak"] - p["rss_base"] for p in parts) / 2**20
        medians[n] = (cpu, rss, growth)
        print(f"| {n:,} | {len(parts)} | {cpu:.3f} | {rss:.0f} MB | {growth:.0f} MB |")
    if len(sizes) > 1:
        small, large = medians[sizes[0]], medians[sizes[-1]]
        print(
            f"ratio N={sizes[-1]:,} / N={sizes[0]:,}: CPU-s per part {large[0] / small[0]:.2f}, "
            f"peak RSS per part {large[1] / small[1]:.2f}, RSS growth over imports {large[2] / max(small[2], 1e-9):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
