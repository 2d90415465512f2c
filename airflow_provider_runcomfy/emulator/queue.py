"""Queue positions in O(log n), so 10,000 queued jobs polled in a loop do not cost O(n²).

A job's ``queue_position`` is how many jobs submitted before it are still
queued. A Fenwick tree over submit order holds a 1 for each job that may
still be queued; a heap of "leaves the queue at" times clears them as the
clock passes, and cancel or expiry clears one at once. A position is then
one prefix sum.
"""

from __future__ import annotations

import heapq


class QueueIndex:
    """Which jobs, by submit sequence number (0, 1, 2, ...), are still queued."""

    def __init__(self) -> None:
        self._tree: list[int] = [0]  # 1-based Fenwick tree
        self._queued: list[bool] = []
        self._leaving: list[tuple[float, int]] = []
        self._now = float("-inf")

    @property
    def now(self) -> float:
        """The latest time the index was advanced to (a clock going back needs a new index)."""
        return self._now

    def _prefix(self, end: int) -> int:
        """How many of the jobs ``0 .. end-1`` are marked queued."""
        total = 0
        while end > 0:
            total += self._tree[end]
            end -= end & -end
        return total

    def _update(self, seq: int, delta: int) -> None:
        index = seq + 1
        while index < len(self._tree):
            self._tree[index] += delta
            index += index & -index

    def add(self, leaves_at: float) -> int:
        """Mark the next job queued until ``leaves_at``; returns its sequence number."""
        seq = len(self._queued)
        index = seq + 1
        queued = leaves_at > self._now
        # A new last node covers (index - lowbit(index), index]: its own flag plus earlier ones.
        covered = self._prefix(index - 1) - self._prefix(index - (index & -index))
        self._tree.append(covered + int(queued))
        self._queued.append(queued)
        if queued:
            heapq.heappush(self._leaving, (leaves_at, seq))
        return seq

    def remove(self, seq: int) -> None:
        """The job left the queue (cancelled or expired) before its time."""
        if self._queued[seq]:
            self._queued[seq] = False
            self._update(seq, -1)

    def ahead(self, seq: int, now: float) -> int:
        """How many jobs submitted before ``seq`` are still queued at ``now``."""
        self.advance(now)
        return self._prefix(seq)

    def advance(self, now: float) -> None:
        """Let the clock pass to ``now``: jobs whose queue time ended leave the queue."""
        self._now = max(self._now, now)
        while self._leaving and self._leaving[0][0] <= now:
            _, seq = heapq.heappop(self._leaving)
            self.remove(seq)
