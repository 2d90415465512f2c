"""Submitting a batch's items: each once, intent first, request id right after, paced by 429s.

``SubmitSteps`` is a part of ``BatchRun`` (``engine``), kept apart because it is the one
step that spends money: every rule of "never pay twice" for a batch is in this file.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.items import BatchItem
from airflow_provider_runcomfy.batch.lean import clip
from airflow_provider_runcomfy.batch.owner import Owner, OwnershipLost
from airflow_provider_runcomfy.batch.pacing import SubmitPacer
from airflow_provider_runcomfy.batch.transitions import Event, change
from airflow_provider_runcomfy.client.errors import (
    AuthenticationError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidInputError,
    InvalidModelError,
    PermissionDeniedError,
    RateLimitedError,
    RunComfyError,
    SubmitOutcomeUnknownError,
    TransportError,
)
from airflow_provider_runcomfy.sources.prepare import PreparedBody

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client import AsyncRunComfyClient

#: Errors after which no submit of this batch can succeed: stop submitting and fail the task.
FATAL_SUBMIT_ERRORS = (InvalidModelError, AuthenticationError, PermissionDeniedError)
#: A submit pause (429s) longer than this ends the refill: the worker waits without a slot instead.
MAX_REFILL_PAUSE = policy.MAX_REFILL_PAUSE


@dataclass(frozen=True)
class BatchSpend:
    """What the budget seam (``may_submit``) sees: spend so far and what is still open."""

    spent_usd: float
    in_flight: int
    submitted: int
    ready: int


@dataclass
class RefillResult:
    """What one refill did, and why it stopped early if it did."""

    submitted: int = 0
    refused: int = 0
    stopped: str | None = None  # "balance" | "budget"
    message: str | None = None
    fatal: RunComfyError | None = None
    paused_until: float | None = None  # time.time() when submits may go on (a 429 pause)


class SubmitSteps:
    """The submit step of ``BatchRun`` (which provides the attributes and views used here)."""

    model_id: str
    ledger: L.Ledger
    max_in_flight: int
    resubmit_unknown: bool
    owner: Owner | None
    records: Callable[..., list[tuple[BatchItem, L.ItemRecord]]]
    count: Callable[..., int]
    spend: Callable[[], BatchSpend]

    @property
    def stopped(self) -> str | None:
        """Why submitting stopped for this try ("balance" | "budget"), as the ledger recorded it."""
        return self.ledger.meta.get("stopped")

    @property
    def stop_message(self) -> str | None:
        """The words of that stop (the budget's figures, RunComfy's answer), as the ledger recorded them."""
        return self.ledger.meta.get("stop_message")

    async def refill(
        self,
        client: AsyncRunComfyClient,
        pacer: SubmitPacer,
        *,
        prepare: Callable[[Sequence[BatchItem]], Sequence[PreparedBody]],
        validate: Callable[..., dict[str, Any]],
        may_submit: Callable[[BatchItem, BatchSpend], bool],
        try_number: int,
        stop_reason: Callable[[], str | None] | None = None,
    ) -> RefillResult:
        """Submit ready items until ``max_in_flight`` jobs are in flight, each once, intent first.

        ``stop_reason`` says why ``may_submit`` refused (the budget's figures); it is kept in the
        ledger, so the manifest and the return value of a later worker part say it too.
        """
        result = RefillResult(stopped=self.stopped)
        if self.stopped:
            return result
        room = self.max_in_flight - self.count(L.SUBMITTED)
        queue = deque(item for item, _ in self.records(L.READY))
        active: set[asyncio.Task[tuple[BatchItem, dict[str, Any], RunComfyError | None]]] = set()
        pending_events: list[dict[str, Any]] = []
        base = self.spend()  # once: the ledger is walked once per refill, not per item
        while (queue and room > 0 and not result.stopped and not result.fatal) or active:
            launch: list[BatchItem] = []
            while queue and room - len(launch) > 0 and len(active) + len(launch) < pacer.concurrency:
                if result.stopped or result.fatal:
                    break
                pause = pacer.paused_until - time.monotonic()
                if pause > MAX_REFILL_PAUSE:
                    result.paused_until = time.time() + pause
                    break
                item = queue[0]
                spend = BatchSpend(
                    spent_usd=base.spent_usd,
                    in_flight=base.in_flight + result.submitted + len(active) + len(launch),
                    submitted=base.submitted + result.submitted + len(active) + len(launch),
                    ready=len(queue),
                )
                if not may_submit(item, spend):  # the BUDGET seam (see the operator's ``may_submit``)
                    result.stopped = "budget"
                    result.message = (stop_reason() if stop_reason else None) or _refused(item, spend)
                    break
                launch.append(queue.popleft())
            if launch:
                payloads = self._payloads(launch, prepare, validate, pending_events)
                launch = [item for item in launch if item.key in payloads]
                me = self.owner.id if self.owner is not None else None
                intents = [
                    change(
                        Event.INTENDED,
                        i.key,
                        [L.READY],
                        index=i.index,
                        try_number=try_number,
                        attempt=_attempts(self.ledger.get(i.key)) + 1,
                        owner=me,
                        intent_at=time.time(),
                    )
                    for i in launch
                ]
                applied = await asyncio.to_thread(self.ledger.append, [*pending_events, *intents])
                pending_events = []
                # An intent that did not apply: the item is no longer ready (another execution has it).
                claimed = set(i["key"] for i, ok in zip(intents, applied[-len(intents) :], strict=True) if ok)
                launch = [item for item in launch if item.key in claimed]
                # The owner check comes AFTER the intents are durable: a newer owner writes its record
                # before it reads the ledger, so whatever this wave sends, the newer one sees intended.
                await self._still_owner(launch, me)
                for item in launch:
                    room -= 1
                    active.add(asyncio.create_task(self._submit(client, pacer, item, payloads[item.key])))
            if not active:
                if result.paused_until is not None:
                    break
                continue
            done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                item, event, error = task.result()
                pending_events.append(event)
                if event["state"] == L.SUBMITTED:
                    result.submitted += 1
                    continue
                if event["state"] == L.READY:  # refused (429) or never sent: nothing was created
                    room += 1
                    result.refused += 1
                    queue.appendleft(item)
                if isinstance(error, InsufficientBalanceError):
                    result.stopped, result.message = "balance", error.message
                elif isinstance(error, FATAL_SUBMIT_ERRORS):
                    result.fatal = error
            # Request ids are recorded as soon as their answers are in (coalesced while writing).
            await asyncio.to_thread(self.ledger.append, pending_events)
            pending_events = []
        if pending_events:
            await asyncio.to_thread(self.ledger.append, pending_events)
        if result.stopped and result.stopped != self.stopped:
            self.ledger.set_meta(stopped=result.stopped, stop_message=result.message)
        return result

    async def _still_owner(self, launch: list[BatchItem], me: str | None) -> None:
        """Raise ``OwnershipLost`` (after withdrawing ``launch``'s intents) when a newer execution took over."""
        if self.owner is None:
            return
        try:
            await asyncio.to_thread(self.owner.check)
        except OwnershipLost:
            withdrawn = [
                change(
                    Event.WITHDRAWN,
                    item.key,
                    [L.INTENT],
                    guard={"owner": me},
                    owner=None,
                    intent_at=None,
                    attempt=_attempts(self.ledger.get(item.key)) - 1,
                )
                for item in launch
            ]
            await asyncio.to_thread(self.ledger.append, withdrawn)
            raise

    def _payloads(
        self,
        launch: list[BatchItem],
        prepare: Callable[[Sequence[BatchItem]], Sequence[PreparedBody]],
        validate: Callable[..., dict[str, Any]],
        events: list[dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        """The request body of each item about to be submitted; one that no longer passes is invalid."""
        payloads = {}
        for item, prepared in zip(launch, prepare(launch), strict=True):
            try:
                if isinstance(prepared, RunComfyError):
                    raise prepared
                payloads[item.key] = validate(self.model_id, prepared)
            except RunComfyError as error:
                events.append(change(Event.REJECTED, item.key, [L.READY], error=clip(error.message)))
        return payloads

    async def _submit(
        self, client: AsyncRunComfyClient, pacer: SubmitPacer, item: BatchItem, payload: dict[str, Any]
    ) -> tuple[BatchItem, dict[str, Any], RunComfyError | None]:
        """One paid submit; the event that records what came of it."""
        await asyncio.sleep(pacer.delay())
        try:
            response = await client.submit(self.model_id, payload)
        except RateLimitedError as error:
            pacer.refused(error.retry_after)
            return item, self._answer(Event.NOT_SENT, item), error
        except TransportError as error:
            if not error.request_sent:
                pacer.refused(None)
                return item, self._answer(Event.NOT_SENT, item), error
            return item, self._unknown(item, error), error
        except SubmitOutcomeUnknownError as error:
            return item, self._unknown(item, error), error
        except InsufficientBalanceError as error:
            return item, self._answer(Event.NOT_SENT, item), error
        except (InputRejectedError, InvalidInputError) as error:
            return item, self._answer(Event.REJECTED, item, error=clip(error.message)), error
        except FATAL_SUBMIT_ERRORS as error:
            return item, self._answer(Event.NOT_SENT, item), error
        except RunComfyError as error:  # a 5xx or an unreadable answer: the job may exist
            return item, self._unknown(item, error), error
        pacer.accepted()
        event = self._answer(Event.ACCEPTED, item, request_id=response.request_id, submitted_at=time.time())
        return item, event, None

    def _answer(self, event: Event, item: BatchItem, **fields: Any) -> dict[str, Any]:
        """The event of a submit's answer: over this execution's own intent only (or the unknown a
        newer owner made of it meanwhile), so a stale execution's answer never undoes a newer record."""
        me = self.owner.id if self.owner is not None else None
        return change(event, item.key, [L.INTENT, L.UNKNOWN], guard={"owner": me}, **fields)

    def _unknown(self, item: BatchItem, error: RunComfyError) -> dict[str, Any]:
        message = (
            f"The submit of item {item.index} may have created a RunComfy job, but its answer was lost "
            f"({error.message}). It is not submitted again (a second job would be billed too). Look for a "
            f"job of {self.model_id} sent at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} in RunComfy's "
            "dashboard; clear the task with on_unknown_submit='resubmit' to pay for it again."
        )
        if self.resubmit_unknown:
            return self._answer(Event.ANSWER_LOST_RESUBMIT, item, error=clip(message))
        return self._answer(Event.ANSWER_LOST, item, error=clip(message))


def _attempts(record: L.ItemRecord | None) -> int:
    return record.attempt if record is not None else 0


def _refused(item: BatchItem, spend: BatchSpend) -> str:
    """Why the batch stopped when ``may_submit`` said no and did not say why (an override)."""
    from airflow_provider_runcomfy.models.spend import usd

    return (
        f"may_submit refused item {item.index} with {usd(spend.spent_usd)} spent and {spend.in_flight} "
        "job(s) in flight; no further item is submitted, the jobs in flight are finished and kept"
    )
