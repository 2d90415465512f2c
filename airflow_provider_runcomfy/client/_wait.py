"""The one shape of waiting for a job, shared by the blocking wait and the trigger.

``Watch`` holds every decision of the loop (is it finished, when to poll next,
has the deadline passed, how many failed polls in a row are tolerated); the
sync and async clients only run it, with ``time.sleep`` or ``asyncio.sleep``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.client import errors
from airflow_provider_runcomfy.client.outcome import Finality, finality

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client.models import RequestResult, RequestState, RequestStatus

log = logging.getLogger("airflow_provider_runcomfy.client")

#: Each wait is stretched or shrunk by up to this share, so that thousands of
#: tasks deferred in the same second do not poll RunComfy in lockstep.
POLL_JITTER = 0.1

StatusCallback = Callable[["RequestStatus"], None]


def deadline_after(seconds: float | None) -> float | None:
    """A wall-clock deadline ``seconds`` from now (what ``Watch.deadline`` takes), or None for none."""
    return None if seconds is None else time.time() + float(seconds)


@dataclass
class Watch:
    """The state of one wait for ``request_id``.

    :param poll_interval: seconds between status polls (jittered by ``POLL_JITTER``).
    :param deadline: wall-clock time (``time.time()``) after which the wait gives up with
        ``JobTimeoutError``; wall clock, so it survives being carried across processes.
    :param max_consecutive_errors: transient poll failures in a row tolerated before giving
        up; each poll has its own retries already, so this covers longer outages.
    :param on_status: called with every status that differs from the previous one.
    """

    request_id: str
    poll_interval: float = 5.0
    deadline: float | None = None
    max_consecutive_errors: int = policy.MAX_CONSECUTIVE_POLL_ERRORS
    on_status: StatusCallback | None = None
    consecutive_errors: int = 0
    last: tuple[RequestState, int | None] | None = field(default=None, init=False)

    def observe(self, status: RequestStatus) -> bool:
        """Record a status; True when the job is finished and ``/result`` should be read."""
        self.consecutive_errors = 0
        seen = (status.status, status.queue_position)
        if seen != self.last:
            self.last = seen
            if self.on_status is not None:
                self.on_status(status)
        return finality(status) is not Finality.WAITING

    def is_final(self, result: RequestResult) -> bool:
        """Whether ``/result`` gave the outcome; a job can read ``completed`` a moment before it does."""
        return finality(result).is_outcome

    def failed(self, error: errors.RunComfyError) -> None:
        """Tolerate a transient poll failure, or re-raise it when it is permanent or repeated."""
        self.consecutive_errors += 1
        if not error.retryable or self.consecutive_errors > self.max_consecutive_errors:
            raise error
        log.warning(
            "Polling RunComfy request %s failed (%d of %d tolerated in a row): %s",
            self.request_id,
            self.consecutive_errors,
            self.max_consecutive_errors,
            error,
        )

    def next_sleep(self) -> float:
        """Seconds until the next poll; raises ``JobTimeoutError`` once the deadline has passed."""
        delay = self.poll_interval * random.uniform(1 - POLL_JITTER, 1 + POLL_JITTER)
        if self.deadline is None:
            return delay
        left = self.deadline - time.time()
        if left <= 0:
            state = getattr(self.last[0], "value", self.last[0]) if self.last else "unknown"
            raise errors.JobTimeoutError(
                f"RunComfy request {self.request_id} did not finish before the deadline "
                f"(last status: {state}).",
                request_id=self.request_id,
            )
        return min(delay, left)
