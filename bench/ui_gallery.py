"""What the outputs view costs the API server at real sizes, in a real deployment.

One command starts a real Airflow deployment on 127.0.0.1 (``tests/system/deployment.py``:
API server, scheduler with the LocalExecutor, DAG processor, triggerer), runs one DAG whose
tasks leave behind what RunComfy tasks do, at the sizes issue 22 measured, and then asks the
API server for the view's pages as a browser would:

1. ``ui_bench_manifests``: 6 batch tasks, each with a ``manifest.jsonl`` of ``--lines``
   lines (~350 bytes each, like a real batch's: 56,000 lines is ~20 MB) in its own folder of
   ``output_dir``. After one first request (which indexes the manifests), ``--requests``
   gallery requests (pages and filters) are timed: the API server's CPU seconds per request
   (its whole process tree) and its peak RSS above what it used before them (sampled every
   10 ms while they run).
2. ``ui_bench_pictures``: one batch task with 12 lines whose kept copies are PNGs of about
   ``--picture-mb`` MB each. A first gallery page is fetched with every picture it shows
   (what a browser with an empty cache does): the bytes moved, page and pictures.

Examples::

    .venv/bin/python bench/ui_gallery.py                  # 6 x 56,000 lines, 2 MB pictures
    .venv/bin/python bench/ui_gallery.py --lines 5000 --requests 5

A measurement, not a test: nothing fails. Only 127.0.0.1 is contacted; every wait is
bounded and the deployment is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "system"))

DAG_SOURCE = textwrap.dedent(
    """
    import io, json, os, random
    import pendulum
    from airflow.sdk import DAG, BaseOperator

    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    OUT = os.environ["BENCH_OUT"]
    LINES = int(os.environ["BENCH_LINES"])
    PICTURE_MB = float(os.environ["BENCH_PICTURE_MB"])
    INPUTS = os.environ["BENCH_INPUTS"]


    class LeftBehind(BaseOperator):
        '''Leaves what a RunComfyBatchOperator leaves: a manifest (and copies) in its own folder.'''

        template_fields = ("output_dir",)

        def __init__(self, output_dir, lines, pictures=0, **kwargs):
            super().__init__(**kwargs)
            self.output_dir, self.lines, self.pictures = output_dir, lines, pictures

        def execute(self, context):
            from airflow_provider_runcomfy.outputs.files import task_directory

            ti = context["ti"]
            folder = task_directory(self.output_dir, dag_id=ti.dag_id, run_id=ti.run_id,
                                    task_id=ti.task_id, map_index=ti.map_index)
            folder.mkdir(parents=True, exist_ok=True)
            stored = []
            for n in range(self.pictures):
                from PIL import Image
                side = int((PICTURE_MB * 1e6 / 3) ** 0.5)
                random.seed(n)
                noise = Image.effect_noise((side, side), 48).convert("RGB")
                picture = Image.blend(Image.linear_gradient("L").resize((side, side)).convert("RGB"), noise, 0.5)
                path = folder / "outputs" / f"{n}_0.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                data = io.BytesIO()
                picture.save(data, "PNG", compress_level=1)
                path.write_bytes(data.getvalue())
                stored.append({"uri": str(path), "bytes": len(data.getvalue()), "sha256": f"bench{n}"})
            with (folder / "manifest.jsonl").open("w") as out:
                for i in range(self.lines):
                    failed = i % 97 == 5
                    out.write(json.dumps({
                        "index": i, "model_id": "google/nano-banana/edit",
                        "input": {"prompt": f"paint item {i} of the spring catalogue as a watercolour",
                                  "image_urls": [f"{INPUTS}/item-{i:06d}.png"]},
                        "request_id": f"req_{i:08d}_aaaaaaaaaaaaaaaa", "status": "failed" if failed else "succeeded",
                        "outputs": [] if failed else [f"https://cdn.runcomfy.net/outputs/req_{i:08d}/image_0.png"],
                        "stored": [] if failed else [stored[i]] if i < len(stored) else [],
                        "error": "the input's host was not found" if failed else None,
                        "cost_usd": None if failed else 0.039,
                    }) + "\\n")
            return {"total": self.lines, "manifest": str(folder / "manifest.jsonl"), "cost_usd": None}


    with DAG("ui_bench_manifests", schedule=None, start_date=START, catchup=False):
        for t in range(6):
            LeftBehind(task_id=f"batch_{t}", output_dir=OUT, lines=LINES)

    with DAG("ui_bench_pictures", schedule=None, start_date=START, catchup=False):
        LeftBehind(task_id="batch", output_dir=OUT, lines=12, pictures=12)
    """
)


def write_inputs(folder: Path, count: int, megabytes: float) -> None:
    """``count`` input pictures of about ``megabytes`` MB each (a gradient under noise, as PNG)."""
    import io

    from PIL import Image

    side = int((megabytes * 1e6 / 3) ** 0.5)
    gradient = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = Image.effect_noise((side, side), 40 + i).convert("RGB")
        data = io.BytesIO()
        Image.blend(gradient, noise, 0.5).save(data, "PNG", compress_level=1)
        (folder / f"item-{i:06d}.png").write_bytes(data.getvalue())


def serve(folder: Path) -> str:
    """Serve ``folder`` over http on 127.0.0.1 (the inputs' host); its base URL."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tree_cpu(server: psutil.Process) -> float:
    total = 0.0
    for process in [server, *server.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(server: psutil.Process) -> int:
    total = 0
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


class PeakRss:
    """The highest RSS of the API server's process tree while the block runs (sampled every 10 ms)."""

    def __init__(self, server: psutil.Process) -> None:
        self.server, self.peak, self._stop = server, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.before = tree_rss(self.server)
        self.peak = self.before
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, tree_rss(self.server))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=56_000, help="lines per manifest (6 manifests)")
    parser.add_argument("--requests", type=int, default=10, help="gallery requests timed after the first")
    parser.add_argument("--picture-mb", type=float, default=2.0, help="size of each kept copy")
    parser.add_argument("--max-minutes", type=float, default=15.0)
    args = parser.parse_args()

    from deployment import AirflowDeployment

    work = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    dags = work / "dags"
    dags.mkdir()
    (dags / "ui_bench.py").write_text(DAG_SOURCE)
    out = work / "out"
    write_inputs(work / "inputs", 12, args.picture_mb)
    inputs = serve(work / "inputs")
    env = {
        "BENCH_OUT": str(out),
        "BENCH_LINES": str(args.lines),
        "BENCH_PICTURE_MB": str(args.picture_mb),
        "BENCH_INPUTS": inputs,
        # The inputs' host is on loopback: like the emulator, a loopback "RunComfy" lets the view
        # fetch plain http from loopback (the URL policy's one exception).
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT": json.dumps(
            {"conn_type": "runcomfy", "host": inputs, "password": "x"}
        ),
    }
    deployment = AirflowDeployment(dags, env, parallelism=4, start_timeout=600, task_heartbeat_timeout=600)
    deployment.start()
    # A machine shared with other runs can keep the API server busy for more than 30 s.
    deployment.api.timeout = httpx.Timeout(180.0)
    try:
        timeout = args.max_minutes * 60
        runs = {}
        for dag_id in ("ui_bench_manifests", "ui_bench_pictures"):
            deployment.wait_for_dag(dag_id, timeout=120)
            runs[dag_id] = deployment.trigger_dag(dag_id)
        for dag_id, run_id in runs.items():
            state = deployment.wait_for_run(dag_id, run_id, timeout=timeout)
            print(f"{dag_id}: run {state}")
        server = psutil.Process(deployment.procs["api-server"].pid)
        with httpx.Client(base_url=deployment.base_url, timeout=300) as http:
            manifests(http, server, runs["ui_bench_manifests"], args, out)
            pictures(http, server, runs["ui_bench_pictures"], args, out)
    finally:
        deployment.stop()


def manifests(http: httpx.Client, server: psutil.Process, run_id: str, args: Any, out: Path) -> None:
    base = f"/runcomfy/gallery/ui_bench_manifests/{run_id}"
    found = sorted((out / "ui_bench_manifests").glob("**/manifest.jsonl"))
    size = sum(f.stat().st_size for f in found)
    lines = [sum(1 for _ in f.open("rb")) for f in found]
    print(f"manifests written: {len(found)}, lines each: {lines}")
    before = tree_cpu(server)
    started = time.monotonic()
    first = http.get(base)
    print(
        f"first gallery request (indexes 6 manifests of {args.lines} lines, {size / 1e6:.1f} MB in all): "
        f"HTTP {first.status_code}, "
        f"{tree_cpu(server) - before:.2f} CPU-s, {time.monotonic() - started:.2f} s"
    )
    queries = ["", "?page=2", "?show=failed", "?show=succeeded&page=40", "?page=9000"]
    spent = []
    with PeakRss(server) as rss:
        for n in range(args.requests):
            before = tree_cpu(server)
            answer = http.get(base + queries[n % len(queries)])
            assert answer.status_code == 200, answer.text[:300]
            spent.append(tree_cpu(server) - before)
    print(
        f"gallery request after the first ({args.requests} requests, pages and filters): "
        f"CPU-s per request mean {sum(spent) / len(spent):.3f}, max {max(spent):.3f}; "
        f"API server peak RSS above before: {(rss.peak - rss.before) / 1e6:.1f} MB "
        f"(RSS before {rss.before / 1e6:.0f} MB)"
    )


def pictures(http: httpx.Client, server: psutil.Process, run_id: str, args: Any, out: Path) -> None:
    page = http.get(f"/runcomfy/gallery/ui_bench_pictures/{run_id}")
    sources = re.findall(r'<img src="([^"]+)"', page.text)
    moved = len(page.content)
    before = tree_cpu(server)
    kept = sum(f.stat().st_size for f in (out / "ui_bench_pictures").glob("**/outputs/*.png"))
    statuses = []
    for source in sources:
        answer = http.get(source.replace("&amp;", "&"))
        statuses.append(answer.status_code)
        moved += len(answer.content)
    print(
        f"first gallery page with {args.picture_mb:g} MB inputs and outputs: {len(sources)} pictures shown "
        f"(HTTP {sorted(set(statuses))}), {moved / 1e6:.2f} MB moved (page and pictures; the 12 kept copies "
        f"are {kept / 1e6:.1f} MB), {tree_cpu(server) - before:.2f} CPU-s to make the thumbnails"
    )
    moved_again = len(page.content)
    for source in sources:
        moved_again += len(http.get(source.replace("&amp;", "&")).content)
    print(
        f"the same page again (thumbnails kept by the API server, no browser cache): {moved_again / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
