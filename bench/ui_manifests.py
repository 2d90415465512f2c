"""The outputs view's own work for a gallery request over 6 batch manifests of 56,000 lines, in one process.

``bench/ui_gallery.py`` measures the view in a real deployment; this one isolates what
grows with the manifests: the gallery's segments, their indexes (``plugins.manifests``),
the page's 12 lines read by seeking, the counts, costs and the HTML -- the same functions
the route calls, without the metadata DB queries and the login (which do not depend on the
manifests). It prints the CPU seconds (this process) and the peak RSS above the start for
the first request (which indexes the manifests) and for the requests after it.

Example::

    .venv/bin/python bench/ui_manifests.py --manifests 6 --lines 56000 --requests 20

A measurement, not a test: nothing fails; files go to a temp folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

RUN = "manual__2026-01-01T00:00:00+00:00"


def write_manifest(path: Path, lines: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(lines):
            failed = i % 97 == 5
            record = {
                "index": i,
                "model_id": "google/nano-banana/edit",
                "input": {
                    "prompt": f"paint item {i} of the spring catalogue as a watercolour",
                    "image_urls": [f"https://assets.example.com/catalogue/2026/item-{i:06d}.png"],
                },
                "request_id": f"req_{i:08d}_aaaaaaaaaaaaaaaa",
                "status": "failed" if failed else "succeeded",
                "outputs": [] if failed else [f"https://cdn.runcomfy.net/outputs/req_{i:08d}/image_0.png"],
                "stored": [],
                "error": "the input's host was not found" if failed else None,
                "cost_usd": None if failed else 0.039,
            }
            out.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", type=int, default=6)
    parser.add_argument("--lines", type=int, default=56_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()

    from airflow_provider_runcomfy.outputs.files import safe_segment
    from airflow_provider_runcomfy.plugins import html
    from airflow_provider_runcomfy.plugins.app import Segment, paged
    from airflow_provider_runcomfy.plugins.manifests import MANIFESTS
    from airflow_provider_runcomfy.plugins.records import Item

    work = Path(tempfile.mkdtemp(prefix="ui-manifests-"))
    try:
        records = []
        for t in range(args.manifests):
            task = f"batch_{t}"
            path = work / "dag_a" / safe_segment(RUN) / task / "-1" / "manifest.jsonl"
            write_manifest(path, args.lines)
            records.append(
                Item("dag_a", RUN, task, -1, state="success", manifest=path.as_uri(), output_dir=str(work))
            )
        size = next((work / "dag_a").glob("**/manifest.jsonl")).stat().st_size
        me = psutil.Process()

        def request(show: str, page: int) -> int:
            segments = [Segment(r, MANIFESTS.index(str(r.manifest))) for r in records]
            shown, counts, pages = paged(segments, show, page, lambda s, p: f"?show={s}&page={p}")
            text = html.gallery_page(
                "dag_a",
                RUN,
                shown,
                prefix="/runcomfy",
                show=show,
                counts=counts,
                pages=pages,
                summaries=[s.summary() for s in segments],
            )
            return len(text)

        peak = [me.memory_info().rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], me.memory_info().rss)

        threading.Thread(target=sample, daemon=True).start()
        before_rss = me.memory_info().rss
        cpu = time.process_time()
        request("all", 1)
        first_cpu = time.process_time() - cpu
        first_peak = peak[0] - before_rss
        after_first = me.memory_info().rss
        peak[0] = after_first
        queries = [("all", 1), ("all", 2), ("failed", 1), ("succeeded", 40), ("all", 9000)]
        spent = []
        for n in range(args.requests):
            cpu = time.process_time()
            request(*queries[n % len(queries)])
            spent.append(time.process_time() - cpu)
        stop.set()
        print(
            f"{args.manifests} manifests of {args.lines} lines ({size / 1e6:.1f} MB each): "
            f"first request {first_cpu:.2f} CPU-s, peak RSS +{first_peak / 1e6:.0f} MB, "
            f"indexes kept +{(after_first - before_rss) / 1e6:.0f} MB"
        )
        print(
            f"requests after the first ({args.requests}): CPU-s mean {sum(spent) / len(spent):.4f}, "
            f"max {max(spent):.4f}; peak RSS above after-first {(peak[0] - after_first) / 1e6:.1f} MB; "
            f"manifests read whole: {MANIFESTS.builds}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
