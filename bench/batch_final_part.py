"""What the last worker part of a batch costs at several N: writing the manifest and the summary.

``bench/batch_parts.py`` measures resumed parts midway; the part that ends a batch is the one
that reads every item back (the manifest has a line per input, in input order). This bench
builds a finished batch's task folder at each ``--n`` (``batch_parts.build``: every item
succeeded, its record in the ledger's archive), then, in a fresh process per measurement, does
what the operator's ``_finish`` does with the batch state: read the inputs and the ledger as a
resumed part does (``archive=False``), write ``manifest.jsonl`` (``batch.report``), build the
return value, list the items that did not succeed. It prints CPU-s (after imports) and peak RSS
(``VmHWM``) per N.

With ``--compare REV`` the same is measured, in the same run and on the same folders, with the
package as committed at ``REV`` (``git archive``, first on ``PYTHONPATH``) beside the working
tree, and the ratios are printed.

    .venv/bin/python bench/batch_final_part.py --n 10000,100000 --compare HEAD~1

A measurement, not a test: nothing fails. No network; each child is bounded by a timeout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from batch_parts import build, peak_rss, resume  # noqa: E402


def final_part(work: Path) -> dict[str, float]:
    """The batch-state work of the part that ends the batch in ``work`` (runs in its own process)."""
    import logging

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch import ledger as L
    from airflow_provider_runcomfy.batch.report import summary, write_batch_manifest

    folder = ObjectStoragePath(f"file://{work}/task")
    folder.fs.ls(folder.path)  # fsspec's first use: the same at any N
    rss_base = peak_rss()
    cpu_start = time.process_time()
    run = resume(work, folder, 500, logging.getLogger("bench"))
    uri = write_batch_manifest(run)
    result = summary(run, uri)
    bad = run.records(L.FAILED, L.CANCELLED, L.UNKNOWN)
    return {
        "cpu": time.process_time() - cpu_start,
        "rss_peak": peak_rss(),
        "rss_base": rss_base,
        "succeeded": result["succeeded"],
        "bad": len(bad),
    }


def export_package(rev: str, into: Path) -> Path:
    """The package as committed at ``rev``, unpacked under ``into`` (for ``PYTHONPATH``)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "airflow_provider_runcomfy"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(work: Path, pythonpath: Path) -> dict[str, float]:
    """One child on a copy of the finished folder (the manifest and a checkpoint are rewritten)."""
    with tempfile.TemporaryDirectory(prefix="runcomfy-final-") as tmp:
        copy = Path(tmp) / "w"
        shutil.copytree(work, copy)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(copy)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(pythonpath)},
        )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="10000,100000", help="batch sizes, comma-separated")
    parser.add_argument("--compare", default="", help="a git revision to measure beside the working tree")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(final_part(Path(args.child))))
        return 0
    sizes = [int(n) for n in args.n.split(",")]
    with tempfile.TemporaryDirectory(prefix="runcomfy-final-rev-") as old:
        sides = {"working tree": REPO}
        if args.compare:
            sides = {args.compare: export_package(args.compare, Path(old)), **sides}
        rows: dict[tuple[str, int], dict[str, float]] = {}
        for n in sizes:
            work = Path(tempfile.mkdtemp(prefix=f"runcomfy-final-{n}-"))
            try:
                build(work, n, 1.0, 0, ready=0)
                for name, path in sides.items():
                    figures = measure(work, path)
                    rows[name, n] = figures
                    print(
                        f"N={n:,} {name:<14}: {figures['cpu']:.2f} CPU-s, peak RSS {figures['rss_peak'] / 2**20:.0f} MB "
                        f"(after imports {figures['rss_base'] / 2**20:.0f} MB), {figures['succeeded']:,.0f} succeeded",
                        flush=True,
                    )
            finally:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print("| N | code | CPU-s | peak RSS | RSS growth over imports |")
    print("|---|---|---|---|---|")
    for (name, n), f in rows.items():
        growth = (f["rss_peak"] - f["rss_base"]) / 2**20
        print(f"| {n:,} | {name} | {f['cpu']:.2f} | {f['rss_peak'] / 2**20:.0f} MB | {growth:.0f} MB |")
    if args.compare:
        for n in sizes:
            new, before = rows["working tree", n], rows[args.compare, n]
            print(
                f"N={n:,}, working tree / {args.compare}: CPU x{new['cpu'] / before['cpu']:.2f}, "
                f"peak RSS x{new['rss_peak'] / before['rss_peak']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
