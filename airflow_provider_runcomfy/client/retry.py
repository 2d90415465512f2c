"""When a failed call is repeated, and after how long: the one place that decides it.

The figures (attempts, backoff, ``Retry-After`` cap) are ``airflow_provider_runcomfy.policy``'s.

Reads (status, result, model info) and cancel are safe to repeat, so they are
retried on rate limits, server errors and transport errors. A submit is a
paid action and RunComfy has no idempotency key, so it is repeated only when
the request provably never reached RunComfy (the connection was never made)
or RunComfy refused it with 429 -- never after a read timeout or a 5xx, when
the job may already exist.

Built on tenacity (shipped with Airflow) so that the sync and async clients
share one policy object and differ only in how they sleep.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.client.errors import RateLimitedError, RunComfyError, TransportError

log = logging.getLogger("airflow_provider_runcomfy.client")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried.

    :param max_attempts: attempts in all, the first included (1 disables retries).
    :param initial_backoff: the backoff ceiling of the first retry, in seconds; it doubles each time.
    :param max_backoff: the largest backoff ceiling, in seconds ("full jitter" sleeps a random
        time between 0 and the ceiling, so many clients do not retry in lockstep).
    :param max_retry_after: the longest ``Retry-After`` honoured, in seconds; a longer hint is cut.
    :param max_total: the whole call, retries and sleeps included, ends within this many seconds.
    """

    max_attempts: int = policy.READ_MAX_ATTEMPTS
    initial_backoff: float = policy.READ_INITIAL_BACKOFF
    max_backoff: float = policy.READ_MAX_BACKOFF
    max_retry_after: float = policy.READ_MAX_RETRY_AFTER
    max_total: float = policy.READ_MAX_TOTAL

    def backoff(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``retry_number`` (1-based).

        A ``retry_after`` that is not a finite number is ignored (``nan`` compares false with
        everything, so ``min``/``max`` would pass it through to ``sleep``).
        """
        if isinstance(retry_after, int | float) and math.isfinite(retry_after):
            return min(max(float(retry_after), 0.0), self.max_retry_after)
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (retry_number - 1))
        return random.uniform(0, ceiling)

    def tenacity_kwargs(self, *, idempotent: bool, what: str) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying``/``AsyncRetrying`` implementing this policy."""
        return {
            "stop": stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_total),
            "wait": self._wait,
            "retry": retry_if_exception(is_retryable if idempotent else is_safe_to_resubmit),
            "before_sleep": _log_retry(what, self.max_attempts),
            "reraise": True,
        }

    def _wait(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return self.backoff(retry_state.attempt_number, retry_after)


def is_retryable(error: BaseException) -> bool:
    """Whether repeating a read or cancel may succeed: rate limit, server error or transport error."""
    return isinstance(error, RunComfyError) and error.retryable


def is_safe_to_resubmit(error: BaseException) -> bool:
    """Whether a submit may be repeated without risk of a second job: it never reached RunComfy."""
    if isinstance(error, RateLimitedError):
        return True
    return isinstance(error, TransportError) and not error.request_sent


#: The longest ``Retry-After`` kept, in seconds (a day); ``RetryPolicy.max_retry_after`` cuts further.
MAX_RETRY_AFTER = 86_400.0


def parse_retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header, in seconds or as an HTTP date; ``None`` if absent or unreadable.

    ``nan``, ``inf`` and other text that is not a number or a date are unreadable; a negative
    value (or a date in the past) is 0; a huge one is cut to ``MAX_RETRY_AFTER``.
    """
    if not value or not isinstance(value, str):
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _log_retry(what: str, max_attempts: int) -> Callable[[RetryCallState], None]:
    def before_sleep(retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        sleep = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning(
            "RunComfy %s failed (%s); retry %d of %d in %.1f s",
            what,
            error,
            retry_state.attempt_number,
            max_attempts - 1,
            sleep,
        )

    return before_sleep
