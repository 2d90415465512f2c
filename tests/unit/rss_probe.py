"""Peak memory of a piece of code, measured in a fresh Python process (for the bomb tests).

``ru_maxrss`` is a process's peak resident memory; measured in a child that has
imported what it needs, before and after the code runs, its growth is what the
code cost at its worst moment -- the figure a decompression bomb inflates.
The test process itself (which runs the emulator) is not in the number.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass

_HARNESS = """
import json, resource, sys
{setup}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    outcome = run(*sys.argv[1:])
except Exception as error:
    outcome = f"{{type(error).__name__}}: {{error}}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kb": after - before, "outcome": str(outcome)[:2000]}}))
"""


@dataclass(frozen=True)
class Measured:
    """What ``run`` returned (or the error it raised, as ``Class: message``), and its peak RSS growth."""

    outcome: str
    growth_mb: float


def peak_rss_growth(setup: str, *args: str, timeout: float = 120) -> Measured:
    """Run ``setup`` (imports and a ``def run(*args) -> str``) in a child; measure ``run(*args)``."""
    code = _HARNESS.format(setup=textwrap.dedent(setup))
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise AssertionError(f"the measured child failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Measured(report["outcome"], report["growth_kb"] / 1024)
