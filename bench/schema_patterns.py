"""CPU per item of checking an input against a published schema with hostile regular expressions.

Before: Python's ``re`` (what ``jsonschema`` uses by default) on the nested-quantifier pattern
``^(\\w+\\s?)*$`` with growing prefixes of the issue's prompt, which cannot match (it has a
comma): the time doubles per character, so 48 characters are extrapolated from the measured
ones -- running them would take a minute per item. Each run is stopped past ``--budget``
CPU-seconds (in a child process with ``RLIMIT_CPU``), so the benchmark always ends.

After: ``models.schema.input_problems`` (RE2) on the same pattern and on every input shape up
to the model sizes the provider knows: the issue's prompt, a 1000-character prompt (the seed
models' ``maxLength``), a key matched by the same pattern under ``patternProperties``, a 6 MiB
``data:`` URI (the largest inline input), and the largest patterns RE2 accepts. For each, the
first check (which compiles the pattern), then the CPU per item over a block of at most
``--repeat`` later ones (and at most 2 CPU-s), and the slowest of them.

    .venv/bin/python bench/schema_patterns.py
    .venv/bin/python bench/schema_patterns.py --budget 5 --repeat 2000

A benchmark, not a test: it prints numbers (``time.process_time`` for CPU, ``perf_counter`` for wall).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOSTILE = r"^(\w+\s?)*$"
PROMPT = "a watercolour portrait of my grandmother, please"  # 48 characters
IMAGE = "https://images.example.com/in.png"

_CHILD = """
import re, sys, time, resource
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))
start = time.process_time()
re.search(sys.argv[1], sys.argv[3])
print(time.process_time() - start)
"""


def python_re(text: str, budget: int) -> float | None:
    """CPU seconds Python's ``re`` spends on ``text``, or None when it ran past ``budget``."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, HOSTILE, str(budget), text],
        capture_output=True,
        text=True,
        timeout=budget * 4 + 30,
        check=False,
    )
    return float(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def before(budget: int) -> None:
    print(f"Python re, {HOSTILE!r}, prefixes of {PROMPT!r} + ',' (no match):")
    measured: list[tuple[int, float]] = []
    for length in range(16, 41, 2):  # bounded: 13 runs at most, each under the budget
        text = PROMPT[: length - 1] + ","
        seconds = python_re(text, budget)
        if seconds is None:
            print(f"  {length:3d} chars: over {budget} CPU-s, stopped")
            break
        measured.append((length, seconds))
        print(f"  {length:3d} chars: {seconds * 1000:10.1f} ms")
    usable = [(n, s) for n, s in measured if s > 0.05]
    if len(usable) >= 2:
        (n0, s0), (n1, s1) = usable[0], usable[-1]
        per_char = (s1 / s0) ** (1 / (n1 - n0))
        print(
            f"  growth: x{per_char:.2f} per character; 48 chars extrapolated: {s1 * per_char ** (48 - n1):.0f} s"
        )


def after(repeat: int) -> None:
    from airflow_provider_runcomfy.models.schema import compile_schema, input_problems

    data_uri = "data:image/png;base64," + base64.b64encode(os.urandom(6 * 1024 * 1024 * 3 // 4)).decode()
    largest_allowed = r"^(?:\w{1,30}\s?){1,30}$"  # 900 repetitions: near RE2's limit of 1000
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("issue prompt, 48 chars", {"prompt": {"type": "string", "pattern": HOSTILE}}, {"prompt": PROMPT}),
        (
            "prompt of 1000 chars",
            {"prompt": {"type": "string", "pattern": HOSTILE}},
            {"prompt": (PROMPT * 25)[:1000]},
        ),
        (
            "patternProperties key, 48 chars",
            {"tags": {"type": "object", "patternProperties": {HOSTILE: {}}, "additionalProperties": False}},
            {"tags": {PROMPT: "x"}},
        ),
        ("6 MiB data: URI", {"image_url": {"type": "string", "pattern": HOSTILE}}, {"image_url": data_uri}),
        (
            "6 MiB data: URI, data-URI pattern",
            {"image_url": {"type": "string", "pattern": r"^data:image/[a-z]+;base64,[A-Za-z0-9+/=]*$"}},
            {"image_url": data_uri},
        ),
        (
            "large pattern, 1000 chars",
            {"prompt": {"type": "string", "pattern": largest_allowed}},
            {"prompt": (PROMPT * 25)[:1000]},
        ),
    ]
    print(
        f"RE2 (models.schema.input_problems), per item: first check (wall, compiles the pattern), "
        f"then CPU per item over a block of up to {repeat} checks, and the slowest of them (wall):"
    )
    for name, properties, payload in cases:
        validator = compile_schema({"type": "object", "properties": properties})
        start = time.perf_counter()
        input_problems(validator, payload)
        first = time.perf_counter() - start
        # The CPU clock ticks coarsely on some VMs (4 ms here): a block of checks, divided.
        cpu_start, walls = time.process_time(), []
        for _ in range(repeat):
            start = time.perf_counter()
            input_problems(validator, payload)
            walls.append(time.perf_counter() - start)
            if time.process_time() - cpu_start > 2.0:
                break
        per_item = (time.process_time() - cpu_start) / len(walls)
        print(
            f"  {name:36s} first {first * 1000:8.3f} ms   CPU/item {per_item * 1000:8.3f} ms"
            f"   slowest {max(walls) * 1000:8.3f} ms   (n={len(walls)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--budget", type=int, default=10, help="CPU-s a Python re run may take")
    parser.add_argument("--repeat", type=int, default=500, help="checks per case after the first (at most)")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CPU, (600, 600))  # the benchmark itself always ends
    before(args.budget)
    after(max(1, min(args.repeat, 10_000)))


if __name__ == "__main__":
    main()
