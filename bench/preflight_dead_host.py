"""Pre-flight of many inputs on a host the worker cannot reach: what it costs, before and after.

A batch's first pass checks every input (``InputPreparer(check_only=True).prepare_many``,
8 at a time). On a host that does not resolve, refuses, or never answers, each input used to
pay for finding that out again. Three real hosts on this machine, no network needed:

* ``unresolvable``: ``https://images.runcomfy-bench.invalid/...`` (real DNS: ``.invalid`` never
  resolves), with the emulator's API base URL (httpx then resolves each URL itself);
* ``refused``: ``http://127.0.0.1:<a closed port>/...``;
* ``no answer``: a loopback port whose accept queue is full, so connections time out
  (``preflight_timeout``, 5 s by default: what an unroutable or firewalled host costs).

For each, ``--items`` inputs are checked by the package as committed at ``--compare`` (by
default the commit before the per-host failure cache) and by the working tree, each in its
own process (``PYTHONPATH``); the old code on the unresolvable and no-answer hosts is given
``--old-items`` only (each costs a lookup or a timeout) and its rate is printed. Lookups and connection attempts are
counted by wrapping ``socket.getaddrinfo`` and ``socket.create_connection``.
Then, working tree only: how soon ``run_ahead`` hands out the first checked item of the
``no answer`` inputs (what lets a batch submit while later inputs are being checked).

    .venv/bin/python bench/preflight_dead_host.py [--items 2000] [--old-items 80]

A benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
#: The API on loopback (the emulator): the URL rules then let pre-flight reach loopback hosts.
API = "http://127.0.0.1:8188"


def api_for(target: str) -> str:
    """The API base URL the rules need: plain http is fetched only from the API's own host and port."""
    return target if target.startswith("http://") else API


NOWHERE = "images.runcomfy-bench.invalid"


def child(kind: str, target: str, items: int, timeout: float) -> None:
    """The measured process: ``items`` inputs on one dead host through ``prepare_many``."""
    lookups: Counter[str] = Counter()
    connects: Counter[str] = Counter()
    lock = threading.Lock()
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            lookups[str(host)] += 1
        return real_getaddrinfo(host, port, *args, **kwargs)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            connects[f"{address[0]}:{address[1]}"] += 1
        return real_connect(address, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.create_connection = create_connection  # type: ignore[assignment]
    from airflow_provider_runcomfy.sources import InputPreparer

    payloads = [{"prompt": "p", "image_url": f"{target}/{n}.png"} for n in range(items)]
    started = time.monotonic()
    with InputPreparer(
        max_concurrency=8,
        check_only=True,
        preflight_timeout=timeout,
        mask=lambda _: None,
        api_base_url=api_for(target),
    ) as preparer:
        preparer.log.disabled = True  # one warning per input is not what is measured
        results = preparer.prepare_many(FLUX, payloads)
    seconds = time.monotonic() - started
    unchecked = sum(1 for r in results if not isinstance(r, Exception) and r.inputs[0].how == "not checked")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "items": items,
                "unchecked": unchecked,
                "lookups": lookups[NOWHERE],
                "connects": sum(connects.values()),
                "sample": next(
                    (str(r.inputs[0].detail) for r in results if not isinstance(r, Exception)), ""
                ),
            }
        )
    )


def first_result(target: str, items: int, timeout: float) -> tuple[float, float]:
    """Seconds until ``run_ahead`` gave the first checked item, and until it gave them all."""
    sys.path.insert(0, str(ROOT))
    from airflow_provider_runcomfy.sources import InputPreparer
    from airflow_provider_runcomfy.sources.preflight import run_ahead

    payloads = ({"prompt": "p", "image_url": f"{target}/{n}.png"} for n in range(items))
    started = time.monotonic()
    first = None
    with InputPreparer(
        max_concurrency=8,
        check_only=True,
        preflight_timeout=timeout,
        mask=lambda _: None,
        api_base_url=api_for(target),
    ) as preparer:
        preparer.log.disabled = True
        for _ in run_ahead(lambda payload: preparer.prepare(FLUX, payload), payloads, workers=8, ahead=64):
            if first is None:
                first = time.monotonic() - started
    return float(first or 0.0), time.monotonic() - started


def export_package(rev: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "airflow_provider_runcomfy"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def before_the_cache() -> str:
    """The commit before the one that brought the per-host failure cache (``HostGate``)."""
    found = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "log",
            "--format=%h",
            "-S",
            "class HostGate",
            "--",
            "airflow_provider_runcomfy/sources/preflight.py",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return f"{found[-1]}^" if found else "HEAD"


def measure(kind: str, target: str, items: int, timeout: float, pythonpath: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, target, str(items), str(timeout)],
        capture_output=True,
        text=True,
        timeout=items * timeout + 120,
        check=False,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stdout}{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000, help="inputs per dead host (default 2000)")
    parser.add_argument(
        "--old-items", type=int, default=80, help="inputs the old code gets on the no-answer host"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="preflight_timeout (default 5 s)")
    parser.add_argument(
        "--compare", default="", help="git revision to compare with (default: before the cache)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, target, items, timeout = args.child
        child(kind, target, int(items), float(timeout))
        return 0
    if not (1 <= args.items <= 20_000 and 1 <= args.old_items <= 2_000):
        parser.error("--items is 1..20000 and --old-items 1..2000 (bounded runs)")

    compare = args.compare or before_the_cache()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    hole = socket.socket()  # listening, its one-connection queue filled, never accepting
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.socket()
    filler.connect(hole.getsockname())
    hosts = {
        "unresolvable": f"https://{NOWHERE}",
        "refused": f"http://127.0.0.1:{refused_port}",
        "no answer": f"http://127.0.0.1:{hole.getsockname()[1]}",
    }
    print(f"{args.items} inputs per host, 8 checked at a time, preflight_timeout={args.timeout:g} s")
    print(
        f"{'host':<13} {'code':<14} {'items':>6} {'seconds':>8} {'items/s':>9} {'lookups':>8} {'connects':>9}"
    )
    try:
        with tempfile.TemporaryDirectory() as old:
            sides = {compare: export_package(compare, Path(old)), "working tree": ROOT}
            for kind, target in hosts.items():
                for side, path in sides.items():
                    slow = (
                        kind != "refused" and side != "working tree"
                    )  # each input costs a lookup or a timeout
                    items = args.old_items if slow else args.items
                    r = measure(kind, target, items, args.timeout, path)
                    rate = r["items"] / r["seconds"] if r["seconds"] else float("inf")
                    print(
                        f"{kind:<13} {side:<14} {r['items']:>6} {r['seconds']:>8.2f} {rate:>9.0f} "
                        f"{r['lookups']:>8} {r['connects']:>9}"
                    )
        first, total = first_result(hosts["no answer"], args.items, args.timeout)
        print(
            f"run_ahead, working tree, no-answer host: first item after {first:.2f} s, "
            f"all {args.items} after {total:.2f} s"
        )
    finally:
        filler.close()
        hole.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
