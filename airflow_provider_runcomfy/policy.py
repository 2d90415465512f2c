"""How the provider retries, tolerates failures, waits and paces: every figure of it, in one place.

The single-job path (client wait, trigger, operators) and the batch (window, pacing,
submitting, copies) used to keep their own figures, and they drifted apart (3 failed
polls in a row here, 5 there; a 60 s defer backstop here, 120 s there). Changing how the
provider retries now starts in this file; the modules that apply a figure import it.

Two figures were merged when this module was made:

- **Failed polls in a row: 3**, for one job and for each job of a batch (the batch
  tolerated 4 before: it gave up on the 5th). Each poll is a read that has already been
  retried by ``READ_RETRY`` (up to 5 attempts within 120 s), so 3 failed polls in a row
  is an outage of minutes; 3 is also the figure docs/waiting.md has always stated.
- **Defer backstop margin: 120 s**, for one job and for the batch (one job had 60 s). The
  backstop must never fire before the trigger reports its own deadline, and a read made
  at the deadline may retry for up to ``READ_MAX_TOTAL`` (120 s) first; with 60 s the
  triggerer could time the task out while its trigger was still reading the outcome.

Nothing here imports Airflow, pydantic or HTTP: the client layer imports it too.
"""

from __future__ import annotations

from datetime import timedelta

# -- reads (status, result, model info, cancel): ``client.retry.RetryPolicy``'s defaults ----------

#: Attempts at one read, the first included. A submit is never retried once it may have reached
#: RunComfy (no idempotency key): ``client.retry`` decides which errors a submit may retry on.
READ_MAX_ATTEMPTS = 5
#: The backoff ceiling of the first retry in seconds; it doubles up to ``READ_MAX_BACKOFF``
#: ("full jitter": a random sleep between 0 and the ceiling).
READ_INITIAL_BACKOFF = 0.5
READ_MAX_BACKOFF = 8.0
#: The longest ``Retry-After`` a read honours, in seconds; a longer hint is cut.
READ_MAX_RETRY_AFTER = 60.0
#: One read, its retries and sleeps included, ends within this many seconds.
READ_MAX_TOTAL = 120.0

# -- waiting -------------------------------------------------------------------------------------

#: Failed polls in a row (each one already retried as a read) tolerated for one job; the next
#: one ends the wait with an error. Used by the blocking wait, the trigger and the batch window.
MAX_CONSECUTIVE_POLL_ERRORS = 3
#: ``defer(timeout=...)`` is the wait's deadline plus this: a backstop behind the trigger's own
#: deadline event, never the deadline itself (see the module docstring for why 120 s).
DEFER_TIMEOUT_MARGIN = timedelta(seconds=READ_MAX_TOTAL)

# -- keeping the outputs -------------------------------------------------------------------------

#: Attempts at downloading one output file (the first included) within one copy.
DOWNLOAD_ATTEMPTS = 3
#: Failed copies of one batch item (each of up to ``DOWNLOAD_ATTEMPTS`` downloads per file)
#: before the item is given up: a file is fetched at most 3 x 3 = 9 times.
MAX_COPY_FAILURES = 3

# -- pacing the batch's submits after 429s ------------------------------------------------------

#: The longest ``Retry-After`` a batch's submits honour, in seconds (the task has a timeout).
MAX_SUBMIT_PAUSE = 60.0
#: A submit pause longer than this ends a refill: the worker then waits without holding a slot.
MAX_REFILL_PAUSE = 10.0
#: The widest gap between two submit starts after repeated 429s, and the first gap after one.
MAX_SUBMIT_GAP = 5.0
FIRST_SUBMIT_GAP = 0.05
#: Accepted submits in a row after which one more may be on the wire again.
GROW_AFTER = 16
