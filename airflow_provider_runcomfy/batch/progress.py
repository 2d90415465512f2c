"""The progress line of a batch: done/total, rate, in flight, ETA -- at most every few seconds.

Both the worker and the trigger log it, through the same ``Progress``: a person
following the task's log sees one line every ``every`` seconds whatever N is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Seconds between two progress lines.
PROGRESS_EVERY = 5.0


@dataclass
class Progress:
    """Counts for the progress line; ``done`` counts items with a final state (any).

    :param total: items in the batch.
    :param done: items already final when this part started.
    :param started_at: ``time.time()`` when the batch (this try) started, for the rate.
    :param done_at_start: ``done`` when ``started_at`` was taken (items finished by earlier tries).
    """

    total: int
    done: int = 0
    started_at: float = field(default_factory=time.time)
    done_at_start: int = 0
    every: float = PROGRESS_EVERY
    _last: float = 0.0

    def line(self, in_flight: int, queue_position: int | None = None, now: float | None = None) -> str:
        """The progress line now."""
        now = time.time() if now is None else now
        elapsed = max(now - self.started_at, 1e-6)
        rate = (self.done - self.done_at_start) / elapsed
        left = self.total - self.done
        share = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"ETA {_duration(left / rate)}" if rate > 0 and left > 0 else "ETA -"
        queue = (
            f", first waiting job at queue position {queue_position}" if queue_position is not None else ""
        )
        return (
            f"Batch progress: {self.done:,}/{self.total:,} done ({share:.0f}%), {rate:.1f} items/s, "
            f"{in_flight:,} in flight, {eta}{queue}."
        )

    def due(self) -> bool:
        """Whether a line is due (``every`` seconds since the last one)."""
        return time.time() - self._last >= self.every

    def maybe_log(
        self,
        log: Callable[[str], object],
        in_flight: int,
        queue_position: int | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Log the line if ``every`` seconds passed since the last one (or ``force``)."""
        now = time.time()
        if not force and now - self._last < self.every:
            return False
        self._last = now
        log(self.line(in_flight, queue_position, now))
        return True


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
