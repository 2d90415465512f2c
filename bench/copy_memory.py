"""Memory and CPU of keeping outputs: is the copy streamed, and what does a MB cost?

Starts the emulator (in this process), has it produce one output padded to
``--bytes`` (rule ``output_bytes``), then copies that output ``--files`` times
to a ``file://`` ``output_dir`` through the provider's storage code
(``OutputStore.keep``, what an operator with ``output_dir`` runs) in a
**separate** process, and prints that process's CPU seconds per MB copied and
its peak RSS before and after the copies. A streamed copy adds a few MB at
most; reading the file whole would add at least its size.

With ``--compare REV`` (default: the commit before the copy path was made cheaper, i.e.
before ``_write_behind``; ``HEAD`` while that change is not committed) the same copies are
made, in the same run, by the package as committed at ``REV`` (``git archive`` into a temporary
folder, put first on ``PYTHONPATH``) and by the working tree, side by side with
their ratio, so a change to the copy path is measured against what it replaces
on the same machine and load. ``--compare ''`` measures the working tree alone.
``--threads 1,8`` shares the copies out among that many threads (one store and
downloader, as a batch's copy threads share one), each count side by side.

    .venv/bin/python bench/copy_memory.py                              # 1 x 50 MB, before/after
    .venv/bin/python bench/copy_memory.py --bytes 2000000 --files 100  # real image sizes
    .venv/bin/python bench/copy_memory.py --bytes 200000000 --files 1 --compare ''
    .venv/bin/python bench/copy_memory.py --bomb                       # a refused 1 GiB bomb
    .venv/bin/python bench/copy_memory.py --bytes 2000000 --files 200 --compare '' --threads 1,8
    .venv/bin/python bench/copy_memory.py --bytes 2000000 --files 200 --compare '' --threads 1,8 --loop

A benchmark, not a test: it prints numbers and asserts only that the copies are whole.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Runs of each side; the median is printed (one run is noisy on a shared 2-core machine).
RUNS = 3

#: ``max_output_bytes`` of the copy of a compression bomb (``--bomb``).
BOMB_CAP = 1_000_000


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User and system CPU of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(
    url: str, request_id: str, output_dir: str, files: int, threads: int = 1, loop: bool = False
) -> None:
    """The measured process: import what a worker has, then copy one output ``files`` times.

    ``threads`` > 1: the copies are shared out among that many threads with one store (and
    downloader), as a batch's copy threads share one (``batch.copies.ThreadCopies``).

    ``loop``: the copies are made on one event loop, ``threads`` at a time, as a batch copies to
    a local disk (``batch.copies.LoopCopies``: ``AsyncOutputDownloader``, ``acopy_output``).

    ``files`` 0: the output is a compression bomb; one copy is tried with a 1 MB cap.
    """
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.outputs.storage import OutputStore, resolve_output_dir

    resolve_output_dir(output_dir)  # everything a worker loads, before the baseline is taken
    ObjectStoragePath(output_dir).fs  # noqa: B018 -- load the filesystem too
    before = peak_rss_mb()
    cpu = cpu_seconds()
    started = time.monotonic()
    # The emulator serves its outputs over plain http on loopback: allowed only because the
    # API itself is there (the output-URL policy, docs/outputs.md).
    api_base_url = url.split("/files/")[0]
    if files == 0:
        from airflow_provider_runcomfy.client.download import OutputTooLargeError

        store = OutputStore(
            ObjectStoragePath(output_dir), max_output_bytes=BOMB_CAP, api_base_url=api_base_url
        )
        try:
            store.keep(request_id, [url])
        except OutputTooLargeError:
            pass
        else:
            raise SystemExit("the bomb was kept")
        print(
            json.dumps(
                {"before_mb": before, "after_mb": peak_rss_mb(), "seconds": time.monotonic() - started}
            )
        )
        return
    store = OutputStore(
        ObjectStoragePath(output_dir), max_output_bytes=512 * 1024 * 1024, api_base_url=api_base_url
    )
    if loop:
        copies = on_loop(ObjectStoragePath(output_dir), api_base_url, request_id, url, files, threads)
    elif threads == 1:
        copies = store.keep(request_id, [url] * files)
    else:
        from concurrent.futures import ThreadPoolExecutor

        shares = [files // threads + (t < files % threads) for t in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            done = pool.map(lambda t: store.keep(f"{request_id}-{t}", [url] * shares[t]), range(threads))
            copies = [copy for kept in done for copy in kept]
    seconds = time.monotonic() - started
    cpu = cpu_seconds() - cpu
    result = {
        "package": str(Path(sys.modules["airflow_provider_runcomfy"].__file__ or "").parent),
        "before_mb": before,
        "after_mb": peak_rss_mb(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "bytes": sum(copy.bytes for copy in copies),
        "sha256": sorted({copy.sha256 for copy in copies}),
        "uris": [copy.uri for copy in copies],
    }
    print(json.dumps(result))


def on_loop(
    folder: Any, api_base_url: str, request_id: str, url: str, files: int, concurrency: int
) -> list[Any]:
    """``files`` copies of ``url`` into ``folder`` on one event loop, ``concurrency`` at a time."""
    import asyncio

    from airflow_provider_runcomfy.client._aiodownload import AsyncOutputDownloader
    from airflow_provider_runcomfy.outputs.files import acopy_output

    async def run() -> list[Any]:
        downloader = AsyncOutputDownloader(max_bytes=512 * 1024 * 1024, api_base_url=api_base_url)
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> Any:
            async with gate:
                return await acopy_output(
                    downloader, folder, f"{request_id}_{n}", url, label=f"copy {n}", request_id=request_id
                )

        try:
            return list(await asyncio.gather(*(one(n) for n in range(files))))
        finally:
            await downloader.aclose()

    return asyncio.run(run())


def export_package(rev: str, into: Path) -> Path:
    """The package as committed at ``rev``, unpacked under ``into`` (for ``PYTHONPATH``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "airflow_provider_runcomfy"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(
    url: str, request_id: str, files: int, pythonpath: Path | None, threads: int = 1, loop: bool = False
) -> dict[str, object]:
    """One child run on a fresh ``output_dir``; checks every copy is whole."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                url,
                request_id,
                f"file://{tmp}",
                str(files),
                f"loop{threads}" if loop else str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
            cwd=tmp,  # not the checkout: the package comes from PYTHONPATH or the install
        )
        if proc.returncode != 0:
            raise SystemExit(f"the copy failed:\n{proc.stdout}{proc.stderr}")
        result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
        uris = result["uris"]
        assert isinstance(uris, list), "no copies listed"
        assert len(set(uris)) == files, "a copy is missing"
        for uri in uris:
            size = Path(str(uri).removeprefix("file://")).stat().st_size
            assert size * files == result["bytes"], "a copy is not whole"
        assert len(result["sha256"]) == 1, "copies of one file differ"  # type: ignore[arg-type]
    return result


def median(runs: list[dict[str, object]], key: str) -> float:
    values = sorted(float(run[key]) for run in runs)  # type: ignore[arg-type]
    return values[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=50_000_000, help="size of the output (default 50 MB)")
    parser.add_argument("--files", type=int, default=1, help="copies made of it (default 1)")
    parser.add_argument(
        "--compare",
        default=None,
        help="git revision to compare with ('' for none; default: before write-behind)",
    )
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each side, median shown ({RUNS})")
    parser.add_argument(
        "--bomb",
        action="store_true",
        help=f"the output is a 1 GiB gzip-in-gzip bomb, copied with a {BOMB_CAP // 1_000_000} MB cap",
    )
    parser.add_argument(
        "--threads",
        default="1",
        help="copy threads, or several to compare side by side (1,8); the batch copies on 8 (default 1)",
    )
    parser.add_argument(
        "--loop",
        action="store_true",
        help="also copy on one event loop, as many at a time as each --threads count (a batch on a local disk)",
    )
    parser.add_argument(
        "--child",
        nargs=5,
        metavar=("URL", "REQUEST_ID", "OUTPUT_DIR", "FILES", "THREADS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.child:
        url, request_id, output_dir, files, threads = args.child
        loop = threads.startswith("loop")
        child(url, request_id, output_dir, int(files), int(threads.removeprefix("loop")), loop)
        return 0
    if not 1 <= args.files <= 1000 or not 1 <= args.runs <= 10:
        parser.error("--files is 1..1000 and --runs 1..10 (bounded runs)")

    sys.path.insert(0, str(ROOT))  # the parent only: a child's package comes from PYTHONPATH
    from airflow_provider_runcomfy.client import RunComfyClient
    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    if args.compare is None:
        args.compare = before_write_behind()
    sides: dict[str, Path | None] = {}
    with tempfile.TemporaryDirectory() as old, RunComfyEmulator(queue_seconds=0, run_seconds=0) as emu:
        if args.compare:
            sides[f"{args.compare} ({_short(args.compare)})"] = export_package(args.compare, Path(old))
        sides["working tree"] = ROOT
        emu.add_rule(output_bytes=args.bytes)
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(
                "blackforestlabs/flux-1-kontext/pro/edit", {"prompt": "bench", "image_url": emu.sample_url()}
            ).request_id
            (url,) = client.wait_for_result(request_id, poll_interval=0.05).output_urls
        if args.bomb:
            emu.add_fault("file", "gzip_bomb", times=None, size=1 << 30)
            return bomb(url, request_id, sides, args.runs)
        thread_counts = [int(t) for t in str(args.threads).split(",")]
        if not all(1 <= t <= 32 for t in thread_counts):
            parser.error("--threads are 1..32")
        results: dict[str, list[dict[str, object]]] = {}
        for _ in range(args.runs):  # interleaved, so every side sees the same load
            for name, path in sides.items():
                for threads in thread_counts:
                    label = (
                        name if len(thread_counts) == 1 and not args.loop else f"{name}, {threads} thread(s)"
                    )
                    results.setdefault(label, []).append(measure(url, request_id, args.files, path, threads))
                    if args.loop:
                        label = f"{name}, loop of {threads}"
                        results.setdefault(label, []).append(
                            measure(url, request_id, args.files, path, threads, loop=True)
                        )

    total_mb = args.files * args.bytes / 1e6
    print(
        f"copies          : {args.files} x {args.bytes / 1e6:.1f} MB = {total_mb:.1f} MB, median of {args.runs} runs"
    )
    rows: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        rows[name] = {
            "cpu_per_mb": median(runs, "cpu_seconds") / total_mb,
            "added_mb": median([{"x": float(r["after_mb"]) - float(r["before_mb"])} for r in runs], "x"),  # type: ignore[arg-type]
            "mb_per_s": total_mb / median(runs, "seconds"),
            "before_mb": median(runs, "before_mb"),
        }
        row = rows[name]
        print(
            f"{name:<32}: {row['cpu_per_mb'] * 1000:6.2f} CPU-ms per MB, {row['mb_per_s']:6.0f} MB/s, "
            f"peak RSS +{row['added_mb']:.1f} MB over a {row['before_mb']:.0f} MB baseline"
        )
    if len(rows) == 2:
        (old_name, old_row), (new_name, new_row) = rows.items()
        print(
            f"{new_name} / {old_name}: CPU per MB x{new_row['cpu_per_mb'] / old_row['cpu_per_mb']:.2f}, "
            f"throughput x{new_row['mb_per_s'] / old_row['mb_per_s']:.2f}, "
            f"peak RSS added {old_row['added_mb']:.1f} -> {new_row['added_mb']:.1f} MB"
        )
    return 0


def bomb(url: str, request_id: str, sides: dict[str, Path | None], runs: int) -> int:
    """Peak RSS a refused 1 GiB bomb adds, for each side."""
    print(f"a 1 GiB 'gzip, gzip' bomb, copied with max_output_bytes={BOMB_CAP}, median of {runs} runs")
    for name, path in sides.items():
        measured = [measure_bomb(url, request_id, path) for _ in range(runs)]
        added = sorted(r["after_mb"] - r["before_mb"] for r in measured)[len(measured) // 2]
        print(
            f"{name:<22}: refused; peak RSS +{added:.1f} MB over a {measured[0]['before_mb']:.0f} MB baseline"
        )
    return 0


def measure_bomb(url: str, request_id: str, pythonpath: Path | None) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", url, request_id, f"file://{tmp}", "0", "1"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
            cwd=tmp,
        )
        if proc.returncode != 0:
            raise SystemExit(f"the bomb copy failed:\n{proc.stdout}{proc.stderr[-3000:]}")
        result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def before_write_behind() -> str:
    """The commit before the one that brought the write-behind copy (``_write_behind``); else HEAD."""
    found = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "--format=%h",
            "-S",
            "def _write_behind",
            "--",
            "airflow_provider_runcomfy/client/download.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{found[-1]}^" if found else "HEAD"


def _short(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
