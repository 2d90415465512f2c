"""What DAG parsing pays for this provider: its own import cost over ``airflow.sdk`` alone.

A DAG file imports ``airflow.sdk`` (~0.8 s, paid by every DAG) and then an operator
module; the second import is this provider's cost, paid by every DAG file that uses
it on every parse. Each run is a fresh interpreter that imports ``airflow.sdk`` first,
then the module, so only what the module adds is counted:

- ``importtime``: the sum of ``python -X importtime``'s cumulative figures of what the
  module import loaded (the figure the project's issues quote);
- ``wall``: ``time.perf_counter`` around the same import (no ``-X importtime`` overhead).

It prints the median (and the spread) over ``--runs`` interpreters, and the modules
that cost most (median self time), so a regression points at its cause.

    .venv/bin/python bench/import_cost.py                      # operators module, 9 runs
    .venv/bin/python bench/import_cost.py --runs 15 --top 15
    .venv/bin/python bench/import_cost.py --module airflow_provider_runcomfy.sensors.runcomfy

Measure on a quiet machine: other work on the same cores moves these figures by
several milliseconds. No test asserts on them (speed belongs here, not in tests/).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from collections import defaultdict

DEFAULT_MODULE = "airflow_provider_runcomfy.operators.runcomfy"
BASELINE = "airflow.sdk"
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")
_WALL = "import time, {base}; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def importtime_run(module: str) -> tuple[float, dict[str, float]]:
    """One fresh interpreter: ms that importing ``module`` added after ``airflow.sdk``, and self ms per module."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {BASELINE}; import {module}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    total_us = 0
    selves: dict[str, float] = {}
    after_baseline = False
    for line in proc.stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, indent, name = int(match[1]), int(match[2]), match[3], match[4]
        top_level = indent == ""
        if not after_baseline:
            after_baseline = top_level and name == BASELINE
            continue
        selves[name] = self_us / 1000
        if top_level:
            total_us += cumulative_us
            if name == module:
                break
    if not after_baseline:
        raise RuntimeError(f"{BASELINE} not found in -X importtime's output")
    return total_us / 1000, selves


def wall_run(module: str) -> float:
    """One fresh interpreter: ms of wall time that importing ``module`` took after ``airflow.sdk``."""
    code = _WALL.format(base=BASELINE, module=module)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(proc.stdout.strip().splitlines()[-1]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--module", default=DEFAULT_MODULE, help=f"what a DAG file imports (default {DEFAULT_MODULE})"
    )
    parser.add_argument("--runs", type=int, default=9, help="fresh interpreters per figure (default 9)")
    parser.add_argument("--top", type=int, default=10, help="modules listed by self time (default 10)")
    args = parser.parse_args()
    runs = max(1, min(args.runs, 101))  # bounded: each run is a ~1 s interpreter start

    totals: list[float] = []
    selves: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        total, per_module = importtime_run(args.module)
        totals.append(total)
        for name, ms in per_module.items():
            selves[name].append(ms)
    walls = [wall_run(args.module) for _ in range(runs)]

    print(f"{args.module} over {BASELINE}, {runs} fresh interpreters each:")
    for label, values in (("importtime", totals), ("wall", walls)):
        print(
            f"  {label:<10} median {statistics.median(values):6.1f} ms"
            f"   (min {min(values):.1f}, max {max(values):.1f})"
        )
    print(f"  costliest modules (median self time, ms; {len(selves)} loaded):")
    ranked = sorted(selves.items(), key=lambda item: statistics.median(item[1]), reverse=True)
    for name, values in ranked[: args.top]:
        print(f"    {statistics.median(values):6.2f}  {name}")


if __name__ == "__main__":
    main()
