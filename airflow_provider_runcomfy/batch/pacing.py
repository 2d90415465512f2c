"""How fast a batch submits: as fast as RunComfy takes it, slowed by 429s, recovering after.

RunComfy publishes no rate limit; it answers 429 when a client goes too fast. The
pacer is additive-increase / multiplicative-decrease, as TCP is: a 429 halves the
number of submits on the wire and doubles the gap between two submits (honouring
``Retry-After`` as a pause of every submit); each accepted submit narrows the gap
again and, after a run of them, allows one more concurrent submit. A refused (429)
submit created no job, so its item is simply submitted again later.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from airflow_provider_runcomfy import policy

#: Submits on the wire at once when nothing has been refused: enough to hide the round trip.
DEFAULT_CONCURRENCY = 8
#: The widest gap between two submit starts after repeated 429s, in seconds (``policy``).
MAX_GAP = policy.MAX_SUBMIT_GAP
#: The first gap after a 429 when there was none, in seconds.
FIRST_GAP = policy.FIRST_SUBMIT_GAP
#: Accepted submits in a row after which one more may be on the wire.
GROW_AFTER = policy.GROW_AFTER
#: The longest ``Retry-After`` honoured, in seconds (a longer one is cut: the task has a timeout).
MAX_PAUSE = policy.MAX_SUBMIT_PAUSE


@dataclass
class SubmitPacer:
    """The submit rate of one batch worker part; lives in memory (a new part starts fast again)."""

    max_concurrency: int = DEFAULT_CONCURRENCY
    concurrency: int = DEFAULT_CONCURRENCY
    gap: float = 0.0
    paused_until: float = 0.0
    refusals: int = 0
    _streak: int = 0
    _next_start: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.concurrency = max(1, min(self.concurrency, self.max_concurrency))

    def delay(self, now: float | None = None) -> float:
        """Seconds to wait before the next submit may start (0: now); reserves that start."""
        now = time.monotonic() if now is None else now
        start = max(now, self.paused_until, self._next_start)
        self._next_start = start + self.gap
        return start - now

    def accepted(self) -> None:
        """A submit went through: narrow the gap; after a run of them, allow one more on the wire."""
        self.gap = 0.0 if self.gap < FIRST_GAP / 2 else self.gap * 0.8
        self._streak += 1
        if self._streak >= GROW_AFTER and self.concurrency < self.max_concurrency:
            self.concurrency += 1
            self._streak = 0

    def refused(self, retry_after: float | None = None, now: float | None = None) -> float:
        """A 429 (or a connection never made): back off; returns the pause before the next submit."""
        now = time.monotonic() if now is None else now
        self.refusals += 1
        self._streak = 0
        self.concurrency = max(1, self.concurrency // 2)
        self.gap = min(MAX_GAP, max(FIRST_GAP, self.gap * 2))
        pause = min(MAX_PAUSE, retry_after) if retry_after is not None else self.gap * random.uniform(1, 2)
        self.paused_until = max(self.paused_until, now + pause)
        return pause
