"""Watching the jobs a batch has in flight, and deciding when the worker should wake to refill.

One loop, shared by ``RunComfyBatchTrigger`` (in the triggerer) and the blocking
mode (in the worker): it reads ``/result`` of each job in flight (one request
tells both "still waiting" and the outcome), at the time the job is expected to be
done and then every ``poll_interval``, and ends with one small event when enough of
the window has finished to make a refill worth a worker slot, when the first
finished job has waited ``max_wait`` seconds, at the batch's deadline, or when
RunComfy cannot be read.

It never submits: a trigger may run more than once (a triggerer that dies and
another that takes over), and a paid submit must happen exactly once, in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.batch.lean import clip, slim_outcome
from airflow_provider_runcomfy.batch.progress import Progress
from airflow_provider_runcomfy.client.errors import RequestNotFoundError, RunComfyError
from airflow_provider_runcomfy.client.outcome import Finality, Outcome, finality

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client import AsyncRunComfyClient

log = logging.getLogger(__name__)

#: The event statuses: ``ready`` (outcomes to record, room to refill), ``timeout`` (the batch's
#: deadline passed: cancel what is queued), ``error`` (RunComfy cannot be read: nothing is known).
READY, TIMEOUT, ERROR = "ready", "timeout", "error"

#: Shortest and longest sleep of the loop between two rounds of polls.
MIN_TICK = 0.05
#: Polls of one round on the wire at once (the shared client bounds the process as a whole too).
POLL_CONCURRENCY = 32
#: Failed reads in a row of one job tolerated before the wait gives up with an ``error`` event:
#: the same figure as one job's wait (``policy``; the batch tolerated 4 before they were merged).
MAX_CONSECUTIVE_ERRORS = policy.MAX_CONSECUTIVE_POLL_ERRORS
#: Cancels in flight at once (``cancel_all``).
CANCEL_CONCURRENCY = 16


@dataclass
class _Entry:
    request_id: str
    key: str
    submitted_at: float
    next_poll: float
    errors: int = 0

    def __lt__(self, other: _Entry) -> bool:
        return self.next_poll < other.next_poll


@dataclass(frozen=True)
class WakeRule:
    """When the wait ends (besides deadline and errors).

    :param wake_count: finished jobs that make a refill worth waking the worker for.
    :param max_wait: seconds a finished job may wait for the others before the worker wakes anyway
        (its outputs are copied then, before their URLs expire).
    :param wake_at: ``time.time()`` at which to wake even if nothing finished (a paused refill).
    :param lead_seconds: how long the worker takes to resume after the event (measured by it):
        jobs expected to finish within that time count as finished, so the worker arrives as
        they end instead of that long after (it reads them itself on arrival).
    """

    wake_count: int
    max_wait: float
    wake_at: float | None = None
    lead_seconds: float = 0.0


@dataclass(eq=False)
class Window:
    """The jobs in flight and the loop that waits for them.

    :param entries: ``[request_id, item key, submitted_at]`` of each job in flight.
    :param model_id: the model, carried into each ``Outcome``.
    :param poll_interval: seconds between two reads of a job that is not done when expected.
    :param expected_seconds: how long jobs of this batch have taken (None: not known yet); the
        first read of a job waits until then, so most jobs are read once or twice in all.
    :param deadline: ``time.time()`` of the batch's timeout, or None.
    :param progress: counts for the progress line (None: no line).
    """

    entries: InitVar[Sequence[Sequence[Any]]]
    _: KW_ONLY
    model_id: str
    poll_interval: float
    rule: WakeRule
    expected_seconds: float | None = None
    deadline: float | None = None
    progress: Progress | None = None
    log_line: Callable[[str], object] = log.info

    def __post_init__(self, entries: Sequence[Sequence[Any]]) -> None:
        self._heap: list[_Entry] = []
        for request_id, key, submitted_at in entries:
            entry = _Entry(str(request_id), str(key), float(submitted_at), 0.0)
            entry.next_poll = self._first_poll(entry)
            self._heap.append(entry)
        heapq.heapify(self._heap)
        self.outcomes: dict[str, dict[str, Any]] = {}  # request id -> Outcome.to_event()
        self._first_finish: float | None = None

    @classmethod
    def from_wait_args(cls, args: Mapping[str, Any], *, log_line: Callable[[str], object]) -> Window:
        """The wait that ``RunComfyBatchTrigger``'s arguments describe: the trigger's and the blocking mode's."""
        progress = args.get("progress")
        return cls(
            args["window"],
            model_id=args["model_id"],
            poll_interval=args["poll_interval"],
            rule=WakeRule(args["wake_count"], args["max_wait"], args["wake_at"], args["lead_seconds"]),
            expected_seconds=args["expected_seconds"],
            deadline=args["deadline"],
            progress=Progress(**progress) if progress else None,
            log_line=log_line,
        )

    # -- the loop -------------------------------------------------------------------------------

    async def wait(self, client: AsyncRunComfyClient) -> dict[str, Any]:
        """Poll until the rule says wake; return the event (outcomes of the finished jobs)."""
        semaphore = asyncio.Semaphore(POLL_CONCURRENCY)
        while True:
            now = time.time()
            due: list[_Entry] = []
            while self._heap and self._heap[0].next_poll <= now:
                due.append(heapq.heappop(self._heap))
            if due:

                async def poll(entry: _Entry) -> RunComfyError | None:
                    async with semaphore:
                        try:
                            await self._poll(client, entry)
                        except RunComfyError as error:
                            return error
                    return None

                failures = [e for e in await asyncio.gather(*(poll(entry) for entry in due)) if e]
                if failures:
                    return self.event(ERROR, message=_error_message(failures[0]), error=failures[0])
            if self.progress is not None and self.progress.due():
                position = await self._queue_position(client)
                self.progress.maybe_log(self.log_line, in_flight=len(self._heap), queue_position=position)
            now = time.time()
            if self.deadline is not None and now >= self.deadline:
                return self.event(TIMEOUT, message="The batch's timeout passed.")
            if self._should_wake(now):
                return self.event(READY)
            await asyncio.sleep(self._sleep(now))

    async def _poll(self, client: AsyncRunComfyClient, entry: _Entry) -> None:
        """Read one job; record its outcome, or schedule its next read. Raises what ends the wait."""
        try:
            result = await client.get_result(entry.request_id, include_cost=True)
        except RequestNotFoundError as error:
            # 404001: unknown or expired -- provably no result to wait for; its item may be paid again.
            self._finish(entry, Outcome.from_error(error, entry.request_id, self.model_id))
            return
        except RunComfyError as error:
            entry.errors += 1
            if not error.retryable or entry.errors > MAX_CONSECUTIVE_ERRORS:
                heapq.heappush(self._heap, entry)  # still in flight: nothing is known about it
                raise
            log.warning("Reading RunComfy request %s failed (%s); trying again.", entry.request_id, error)
            entry.next_poll = time.time() + self.poll_interval
            heapq.heappush(self._heap, entry)
            return
        entry.errors = 0
        state = finality(result)
        if state.is_outcome:
            self._finish(entry, Outcome.from_result(result, self.model_id))
            return
        # WAITING, or NOT_WRITTEN ("completed" before the outcome is written): same id, later.
        entry.next_poll = self._next_poll(entry, time.time(), soon=state is Finality.NOT_WRITTEN)
        heapq.heappush(self._heap, entry)

    async def _queue_position(self, client: AsyncRunComfyClient) -> int | None:
        """The queue position of the oldest job still waiting, for the progress line (one read)."""
        if not self._heap:
            return None
        oldest = min(self._heap, key=lambda entry: entry.submitted_at)
        try:
            status = await client.get_status(oldest.request_id)
        except RunComfyError:
            return None  # a progress line is not worth an error
        return status.queue_position if finality(status) is Finality.WAITING else None

    def _finish(self, entry: _Entry, outcome: Outcome) -> None:
        # Lean: a ``/result`` may carry megabytes of ``output``; the event keeps what the ledger keeps.
        self.outcomes[entry.request_id] = slim_outcome({**outcome.to_event(), "key": entry.key})
        if self._first_finish is None:
            self._first_finish = time.time()
        if self.progress is not None:
            self.progress.done += 1

    async def poll_due(self, client: AsyncRunComfyClient) -> list[dict[str, Any]]:
        """One round: read every job due by now (expected done), once; the outcomes found.

        What the worker does on arrival after a wake that counted on jobs about to end.
        Errors are left to the next wait (nothing is concluded from them).
        """
        now = time.time()
        due: list[_Entry] = []
        while self._heap and self._heap[0].next_poll <= now:
            due.append(heapq.heappop(self._heap))
        semaphore = asyncio.Semaphore(POLL_CONCURRENCY)

        async def poll(entry: _Entry) -> None:
            async with semaphore:
                with contextlib.suppress(RunComfyError):  # left to the next wait
                    await self._poll(client, entry)

        await asyncio.gather(*(poll(entry) for entry in due))
        return list(self.outcomes.values())

    def expected_wake(self, now: float) -> float:
        """When ``wait`` would end if every job ends when expected (``time.time()``; ``now`` or later).

        The ``wake_count``-th due read among the jobs in flight, or ``wake_at`` if sooner. What
        decides whether a worker part waits in place or defers (``batch.step.waits_in_place``).
        """
        times = [] if self.rule.wake_at is None else [self.rule.wake_at]
        needed = self.rule.wake_count - len(self.outcomes)
        if needed > 0 and self._heap:  # fewer in flight than needed: the last of them
            times.append(heapq.nsmallest(needed, (entry.next_poll for entry in self._heap))[-1])
        elif needed <= 0 or not times:  # nothing in flight with a clock set: only the clock wakes it
            times.append(now)
        return max(now, min(times))

    def due_within(self, seconds: float) -> int:
        """How many jobs in flight are due to be read (expected to end) within ``seconds``."""
        horizon = time.time() + seconds
        return sum(1 for entry in self._heap if entry.next_poll <= horizon)

    # -- timing ---------------------------------------------------------------------------------

    def _first_poll(self, entry: _Entry) -> float:
        if self.expected_seconds is not None:
            return entry.submitted_at + self.expected_seconds
        return entry.submitted_at + self.poll_interval

    def _next_poll(self, entry: _Entry, now: float, *, soon: bool = False) -> float:
        if soon:
            return now + min(self.poll_interval, 1.0)
        if self.expected_seconds is not None:
            expected_done = entry.submitted_at + self.expected_seconds
            if now < expected_done:
                return expected_done
            # Late: read again at a tenth of the usual run time, within [0.5 s, poll_interval].
            return now + min(self.poll_interval, max(0.5, self.expected_seconds / 10))
        return now + self.poll_interval

    def _should_wake(self, now: float) -> bool:
        finished = len(self.outcomes)
        if not self._heap:
            return self.rule.wake_at is None or now >= self.rule.wake_at or finished > 0
        if self.rule.wake_at is not None and now >= self.rule.wake_at:
            return True
        if finished >= self.rule.wake_count:
            return True
        if self.rule.lead_seconds > 0 and self.expected_seconds is not None:
            horizon = now + self.rule.lead_seconds
            if finished + sum(1 for e in self._heap if e.next_poll <= horizon) >= self.rule.wake_count:
                return True
        return self._first_finish is not None and now - self._first_finish >= self.rule.max_wait

    def _sleep(self, now: float) -> float:
        until = [now + self.poll_interval]
        if self._heap:
            until.append(self._heap[0].next_poll)
        if self._first_finish is not None:
            until.append(self._first_finish + self.rule.max_wait)
        if self.rule.wake_at is not None:
            until.append(self.rule.wake_at)
        if self.deadline is not None:
            until.append(self.deadline)
        if self.progress is not None:
            until.append(now + self.progress.every)
        return max(MIN_TICK, min(until) - now)

    # -- the event ------------------------------------------------------------------------------

    def event(self, status: str, *, message: str = "", error: RunComfyError | None = None) -> dict[str, Any]:
        """The event: small, JSON, what the worker needs to record, copy and refill."""
        return {
            "status": status,
            "outcomes": list(self.outcomes.values()),
            "still_in_flight": len(self._heap),
            "message": clip(message),
            "error_kind": error.kind if error is not None else None,
            "retryable": bool(error.retryable) if error is not None else None,
            "fired_at": time.time(),
        }


def _error_message(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return f"RunComfy could not be read while waiting for the batch: {text}"


async def cancel_all(
    client: AsyncRunComfyClient, request_ids: Sequence[str], log: Any, why: str | None = None
) -> dict[str, bool | None]:
    """Cancel a batch's jobs, a few at a time; shared by the worker and the trigger's ``on_kill``.

    Returns, per request id, True (cancelled: never billed), False (already running or
    finished: RunComfy finishes and bills it) or None (the cancel failed; logged).
    """
    semaphore = asyncio.Semaphore(CANCEL_CONCURRENCY)
    results: dict[str, bool | None] = {}
    because = f" ({why})" if why else ""

    async def cancel(request_id: str) -> None:
        async with semaphore:
            try:
                response = await client.cancel(request_id)
            except RunComfyError as error:
                log.warning("Could not cancel RunComfy request %s%s: %s", request_id, because, error)
                results[request_id] = None
                return
        results[request_id] = response.cancelled

    await asyncio.gather(*(cancel(request_id) for request_id in request_ids))
    return results
