"""What the worker does between two waits of a batch: check, submit, record, copy, report.

``BatchRun`` is one worker part's view of the batch: the items, the ledger read
back from ``output_dir``, and the steps the operator calls in order. Every state
change goes to the ledger before the step that depends on it (see ``ledger``), and
every one is a row of ``transitions.TRANSITIONS``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.copies import copy_pool
from airflow_provider_runcomfy.batch.items import BatchItem, ItemList
from airflow_provider_runcomfy.batch.lean import clip, slim_outcome
from airflow_provider_runcomfy.batch.owner import INTENT_GRACE, Owner
from airflow_provider_runcomfy.batch.submitting import BatchSpend, RefillResult, SubmitSteps
from airflow_provider_runcomfy.batch.transitions import Event, change
from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.client.outcome import OutcomeKind, event_kind
from airflow_provider_runcomfy.policy import MAX_COPY_FAILURES

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.client import AsyncRunComfyClient
    from airflow_provider_runcomfy.sources.prepare import PreparedBody

#: A share of ``max_in_flight`` that must have finished before the worker wakes to refill.
REFILL_FRACTION = 0.1
#: Output downloads at once (threads: the download client is blocking).
DOWNLOAD_CONCURRENCY = 8
#: Outcomes of recent jobs used to estimate how long a job takes.
DURATION_SAMPLE = 200

#: What a first record of an item starts from: none yet (a record another execution wrote first wins).
_NEW: list[str | None] = [None]
#: States of an item whose job RunComfy accepted (what ``BatchSpend.submitted`` counts).
_PAID_STATES = (L.SUBMITTED, L.FINISHED, L.SUCCEEDED, L.FAILED, L.CANCELLED)

__all__ = ["BatchRun", "BatchSpend", "RefillResult"]


class BatchRun(SubmitSteps):
    """One worker part of a batch.

    :param model_id: the model.
    :param items: the batch's items, in input order.
    :param ledger: the loaded ledger.
    :param folder: the task instance's folder in ``output_dir`` (outputs go to ``outputs/``).
    :param log: the task's logger.
    """

    def __init__(
        self,
        model_id: str,
        items: Sequence[BatchItem],
        ledger: L.Ledger,
        folder: ObjectStoragePath,
        *,
        max_in_flight: int,
        max_output_bytes: int,
        resubmit_unknown: bool,
        log: Any,
        api_base_url: str | None = None,
        owner: Owner | None = None,
    ) -> None:
        self.model_id = model_id
        self.items = ItemList.of(items)
        self.by_key = self.items.by_key()
        self.ledger = ledger
        self.folder = folder
        self.max_in_flight = max_in_flight
        self.max_output_bytes = max_output_bytes
        self.resubmit_unknown = resubmit_unknown
        self.log = log
        self.api_base_url = api_base_url
        self.owner = owner
        self._copies = copy_pool(DOWNLOAD_CONCURRENCY, folder / "outputs", max_output_bytes, api_base_url)

    # -- views ----------------------------------------------------------------------------------

    def record(self, item: BatchItem) -> L.ItemRecord | None:
        return self.ledger.get(item.key)

    def records(self, *states: str) -> list[tuple[BatchItem, L.ItemRecord]]:
        """The items in ``states`` and their records, in input order (only those: never a walk over N)."""
        found = [
            (self.by_key[key], record)
            for key in self.ledger.keys_in(*states)
            if key in self.by_key and (record := self.ledger.get(key)) is not None
        ]
        found.sort(key=lambda pair: pair[0].index)
        return found

    def in_flight(self) -> list[list[Any]]:
        """``[request_id, key, submitted_at]`` of every job in flight, for the wait."""
        return [
            [r.request_id, r.key, r.submitted_at or time.time()]
            for _, r in self.records(L.SUBMITTED)
            if r.request_id
        ]

    def count(self, *states: str) -> int:
        """How many items are in ``states``: ``len(records(...))`` without reading or sorting a record."""
        return self.ledger.count_in(states, self.by_key)

    def ready_count(self) -> int:
        return self.count(L.READY)

    def unchecked_count(self) -> int:
        """Items not checked yet (pre-flight overlaps submitting: see ``check``'s ``limit``)."""
        return len(self.items) - self.ledger.count_known(self.by_key)

    def spend(self) -> BatchSpend:
        """Spend over EVERY record of the task instance: every try, and items no longer in the inputs."""
        return BatchSpend(
            spent_usd=round(self.ledger.spent_usd(), 6),
            in_flight=self.count(L.SUBMITTED),
            submitted=self.ledger.count_in(_PAID_STATES, self.by_key),
            ready=self.ready_count(),
        )

    def expected_seconds(self) -> float | None:
        """How long this batch's jobs have run (median, RunComfy's own timestamps), if any finished."""
        durations = self.ledger.durations()[-DURATION_SAMPLE:]
        return statistics.median(durations) if durations else None

    def done_count(self) -> int:
        return self.ledger.count_in(L.FINAL, self.by_key)

    # -- checking -------------------------------------------------------------------------------

    def check(
        self,
        prepare: Callable[[Sequence[BatchItem]], Sequence[PreparedBody]],
        validate: Callable[..., Any],
        *,
        limit: int | None = None,
    ) -> int:
        """Prepare and validate the items the ledger has not seen (the first ``limit``); record each.

        Returns how many items are invalid in all. Nothing is sent to RunComfy's API here
        (preparation may pre-flight input URLs; that is the inputs seam's business). With a
        ``limit`` the first submits start while later inputs are still to be checked.
        """
        new = self.items.unseen(self.ledger, limit)
        if new:
            events = []
            for item, prepared in zip(new, prepare(new), strict=True):
                error = prepared if isinstance(prepared, RunComfyError) else None
                if error is None:
                    try:
                        validate(self.model_id, prepared)
                    except InvalidInputError as invalid:
                        error = invalid
                    except (ValueError, TypeError) as bad:  # one malformed item is one invalid item
                        error = InvalidInputError(f"Item {item.index}: {bad}")
                if error is not None:
                    events.append(
                        change(Event.REJECTED, item.key, _NEW, index=item.index, error=clip(error.message))
                    )
                else:
                    events.append(change(Event.CHECKED, item.key, _NEW, index=item.index))
            self.ledger.append(events)
        return self.ledger.count_in([L.INVALID], self.by_key)

    def start_try(self, try_number: int, try_id: str) -> None:
        """A new try (a retry or a clear): what to do again, what to re-attach to, what stays unknown.

        ``try_id`` is the task instance try's own id (Airflow gives every try a new one), so a
        re-run that starts again at try 1 (``airflow dags test`` of the same date) is a new try too.
        """
        if self.ledger.meta.get("try_id") == try_id:
            return
        events: list[dict[str, Any]] = []
        now = time.time()
        for item, record in self.records(L.FAILED, L.CANCELLED, L.INTENT, L.UNKNOWN):
            if record.state == L.FAILED and event_kind(record.outcome or {}) is OutcomeKind.SUCCEEDED:
                # The job succeeded but its outputs could not be kept: try the copy again, not the job.
                events.append(
                    change(
                        Event.RETRY_KEEP,
                        item.key,
                        [L.FAILED],
                        guard={"request_id": record.request_id},
                        error=None,
                        copy_failures=0,
                    )
                )
            elif record.state in (L.FAILED, L.CANCELLED):
                events.append(_reset(item, record))
            elif record.state == L.INTENT and _fresh_foreign(record, self.owner, now):
                continue  # another execution may be sending it right now: ``settle`` decides later
            elif self.resubmit_unknown:
                self.log.warning(
                    "Item %d: an earlier try's submit has no known outcome; submitting it again "
                    "(on_unknown_submit='resubmit'): RunComfy may bill it twice.",
                    item.index,
                )
                events.append(_reset(item, record))
            elif record.state == L.INTENT:
                events.append(_to_unknown(item, record))
        events.append(
            {
                "meta": {
                    "try_number": try_number,
                    "try_id": try_id,
                    "try_started_at": time.time(),
                    "done_at_try_start": self.done_count(),
                    "stopped": None,
                    "stop_message": None,
                }
            }
        )
        self.ledger.append(events)

    # -- another execution's intents ------------------------------------------------------------

    def limbo(self) -> list[L.ItemRecord]:
        """Intents another execution wrote within ``INTENT_GRACE``: maybe on the wire, never sent from here."""
        now = time.time()
        return [r for _, r in self.records(L.INTENT) if _fresh_foreign(r, self.owner, now)]

    def settle(self) -> None:
        """Intents of another execution older than ``INTENT_GRACE`` become ``unknown`` (never paid again)."""
        now = time.time()
        events = [
            _to_unknown(item, record)
            for item, record in self.records(L.INTENT)
            if record.owner != (self.owner.id if self.owner else None)
            and not _fresh_foreign(record, self.owner, now)
        ]
        self.ledger.append(events)

    def limbo_ends_at(self) -> float | None:
        """When the last of those intents is settled (a wake time for the wait)."""
        waiting = self.limbo()
        return max(float(r.intent_at or 0) for r in waiting) + INTENT_GRACE if waiting else None

    # -- outcomes -------------------------------------------------------------------------------

    def apply_outcomes(self, outcomes: Sequence[dict[str, Any]]) -> None:
        """Record what the wait learned; an outcome for a job the ledger no longer expects is ignored."""
        events = []
        for outcome in outcomes:
            record = self.ledger.get(str(outcome.get("key")))
            if (
                record is None
                or record.state != L.SUBMITTED
                or record.request_id != outcome.get("request_id")
            ):
                continue
            kind = event_kind(outcome)
            slim = slim_outcome(outcome)
            slim.pop("key", None)
            extra: dict[str, Any] = {}
            if kind is OutcomeKind.SUCCEEDED:
                happened = Event.OUTPUTS_READY if outcome.get("outputs") else Event.JOB_SUCCEEDED
            elif kind is OutcomeKind.CANCELLED:
                happened = Event.JOB_CANCELLED
                extra["error"] = clip(outcome.get("message") or "cancelled")
            else:  # failed, timeout, error (expired: 404001), or a word no version wrote
                happened = Event.JOB_FAILED
                extra["error"] = clip(outcome.get("message") or outcome.get("status"))
            guard = {"request_id": record.request_id}
            events.append(change(happened, record.key, [L.SUBMITTED], guard=guard, outcome=slim, **extra))
        self.ledger.append(events)

    # -- cancelling -----------------------------------------------------------------------------

    async def cancel_in_flight(self, client: AsyncRunComfyClient, why: str) -> None:
        """Cancel every job in flight (queued ones stop; running ones finish and are billed)."""
        records = [r for _, r in self.records(L.SUBMITTED) if r.request_id]
        results = await self._cancel_records(client, records, why)
        if records:
            self.log.info(
                "Cancelling the batch's jobs because %s: %d cancelled (not billed), %d already running or "
                "finished (RunComfy finishes and bills them; a retry re-attaches to them).",
                why,
                sum(result is True for result in results.values()),
                sum(result is False for result in results.values()),
            )

    async def _cancel_records(
        self, client: AsyncRunComfyClient, records: list[L.ItemRecord], why: str
    ) -> dict[str, bool | None]:
        """Cancel the jobs of ``records``; those RunComfy cancelled are recorded ``cancelled``."""
        from airflow_provider_runcomfy.batch.window import cancel_all

        results = await cancel_all(client, [str(r.request_id) for r in records], self.log, why)
        self.ledger.append(
            [
                change(
                    Event.JOB_CANCELLED,
                    r.key,
                    [L.SUBMITTED],
                    guard={"request_id": r.request_id},
                    error=f"cancelled because {why}",
                )
                for r in records
                if results.get(str(r.request_id))
            ]
        )
        return results

    def vanished_in_flight(self) -> list[L.ItemRecord]:
        """Jobs in flight of items no longer in the inputs (the inputs file changed between tries)."""
        return [
            record
            for key in self.ledger.keys_in(L.SUBMITTED)
            if key not in self.by_key and (record := self.ledger.items[key]).request_id
        ]

    async def cancel_vanished(self, client: AsyncRunComfyClient) -> None:
        """Cancel those jobs and say so: queued ones are not billed, running ones are (and still counted)."""
        records = self.vanished_in_flight()
        results = await self._cancel_records(client, records, "its item is no longer in the inputs")
        self.log.warning(
            "%d job(s) in flight belong to items no longer in the inputs: %d cancelled (not billed), %d already "
            "running or finished (billed; counted in max_cost_usd): %s",
            len(records),
            sum(result is True for result in results.values()),
            sum(result is not True for result in results.values()),
            ", ".join(str(r.request_id) for r in records[:20]),
        )

    # -- copying --------------------------------------------------------------------------------

    def start_copies(self) -> int:
        """Start copying the outputs of finished jobs to ``outputs/`` (``batch.copies``); how many items were started.

        The copies go on while the worker does other things (its wait for the next jobs);
        ``record_copies`` writes what they kept to the ledger.
        """
        todo = self.records(L.FINISHED)
        if not todo:
            return 0
        if not self._copies:
            folder = self._copies.folder
            folder.fs.makedirs(folder.path, exist_ok=True)
        return self._copies.start(todo)

    def copying(self) -> int:
        """Items whose copies were started and not recorded yet."""
        return len(self._copies)

    def record_copies(self, *, wait: bool) -> int:
        """Record the copies that ended (``wait``: every copy started, once it ends); the outputs kept."""
        events: list[dict[str, Any]] = []
        kept = 0
        try:
            for item, record, future in self._copies.ended(wait=wait):
                guard = {"request_id": record.request_id}
                error = future.exception()
                if error is None:
                    stored = future.result()
                    kept += len(stored)
                    events.append(change(Event.KEPT, item.key, [L.FINISHED], guard=guard, stored=stored))
                elif isinstance(error, (RunComfyError, ValueError)):
                    events.append(self._copy_failed(item, record, error))
                else:
                    raise error  # not the item's fault (a full disk): the part fails, the copies before count
                if len(events) >= 100:  # recorded as they come, so a crash re-copies little
                    self.ledger.append(events)
                    events = []
        finally:
            self.ledger.append(events)
        return kept

    def store_outputs(self) -> int:
        """Copy the outputs of every finished job now, and record them; the outputs kept.

        The copies end with it: this is what a part does last (a batch that timed out).
        """
        try:
            self.start_copies()
            return self.record_copies(wait=True)
        finally:
            self.close_copies()

    def close_copies(self) -> None:
        """End this part's copies (those not recorded are made again by a later part)."""
        self._copies.close()

    def _copy_failed(self, item: BatchItem, record: L.ItemRecord, error: Exception) -> dict[str, Any]:
        """A copy that failed: counted, and final when it cannot pass or failed too often."""
        # A malformed output URL (``ValueError`` from URL parsing, whatever its class) fails this
        # item, not the batch.
        message = error.message if isinstance(error, RunComfyError) else f"malformed output URL: {error}"
        failures = record.copy_failures + 1
        final = not getattr(error, "retryable", False) or failures >= MAX_COPY_FAILURES
        self.log.warning(
            "Item %d: keeping the outputs of %s failed: %s", item.index, record.request_id, clip(message)
        )
        # Final: the item failed. Else counted, and a later worker part tries the copy again.
        guard = {"request_id": record.request_id}
        if final:
            error_text = clip(f"the job succeeded but its outputs could not be kept: {message}")
            return change(
                Event.KEEP_FAILED,
                item.key,
                [L.FINISHED],
                guard=guard,
                copy_failures=failures,
                error=error_text,
            )
        return change(Event.KEEP_RETRY, item.key, [L.FINISHED], guard=guard, copy_failures=failures)

    # -- refill planning ------------------------------------------------------------------------

    def wake_count(self) -> int:
        """Finished jobs that make waking the worker worth it: a share of the window, or all at the end."""
        window = self.count(L.SUBMITTED)
        if (self.ready_count() or self.unchecked_count()) and not self.stopped:
            return max(1, min(window, math.ceil(self.max_in_flight * REFILL_FRACTION)))
        return max(1, window)


def _reset(item: BatchItem, record: L.ItemRecord) -> dict[str, Any]:
    """Back to ready for a new try; what the earlier attempt cost stays counted (``paid_usd``)."""
    return change(
        Event.RESET,
        item.key,
        [record.state],
        guard={"request_id": record.request_id},
        request_id=None,
        submitted_at=None,
        outcome=None,
        stored=[],
        error=None,
        copy_failures=0,
        owner=None,
        intent_at=None,
        paid_usd=record.spent_usd(),
    )


def _to_unknown(item: BatchItem, record: L.ItemRecord) -> dict[str, Any]:
    return change(
        Event.ABANDONED,
        item.key,
        [L.INTENT],
        guard={"owner": record.owner},
        error=_unknown_message(item, record),
    )


def _fresh_foreign(record: L.ItemRecord, owner: Owner | None, now: float) -> bool:
    """An intent another (maybe still running) execution wrote less than ``INTENT_GRACE`` ago."""
    mine = owner.id if owner is not None else None
    return record.owner not in (None, mine) and now - float(record.intent_at or 0) < INTENT_GRACE


def _unknown_message(item: BatchItem, record: L.ItemRecord) -> str:
    return (
        f"An earlier try recorded the intent to submit item {item.index} but no request id: the worker stopped "
        "while the submit was on its way, so RunComfy may or may not have created (and billed) a job. It is not "
        "submitted again. Look for the job in RunComfy's dashboard; to pay for it again, clear the task with "
        "on_unknown_submit='resubmit'."
    )
