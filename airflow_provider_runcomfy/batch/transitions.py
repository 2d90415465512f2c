"""The life of a batch item: which ledger state may follow which, and the one way to write a change.

An item is ``ready`` once checked (or ``invalid``), holds an ``intent`` while its paid submit
is on its way, is ``submitted`` once RunComfy answered with a request id, ``finished`` when
its job succeeded with outputs still to keep, and ``succeeded`` once they are kept. The
ways out are ``failed``, ``cancelled``, ``invalid`` and ``unknown`` (a submit whose answer
was lost: never paid again unless the user says so). A new try sends some of them back.

Every state change the engine and the submit step make is a row of ``TRANSITIONS``,
written as a ledger event by ``change``. A change not in the table is a bug in this
package, refused before it reaches the ledger, where it would be durable. The event's
``expect`` names the states the change starts from, so the ledger applies it only to a
record still in one of them (compare-and-set): a row of the table is also what keeps two
executions of one batch from undoing each other's records.

The events are the ledger's format, which is durable data: ``change`` builds exactly the
lines earlier versions wrote (``key``, ``index`` for a first record, ``state``, the
changed fields, ``expect``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from airflow_provider_runcomfy.batch import ledger as L


class Event(StrEnum):
    """What happened to an item (the second half of a row's key)."""

    #: Its input passed the checks (pre-flight, schema).
    CHECKED = "checked"
    #: Its input is refused: by the checks, again just before the submit, or by RunComfy.
    REJECTED = "rejected"
    #: This execution is about to pay for it (written, durably, before the submit).
    INTENDED = "intended"
    #: Another execution took the batch over before the submit went out: nothing was sent.
    WITHDRAWN = "withdrawn"
    #: RunComfy accepted the submit and gave a request id.
    ACCEPTED = "accepted"
    #: The submit created nothing (a 429, never sent, out of balance, a token or model refused).
    NOT_SENT = "not_sent"
    #: The submit's answer was lost: RunComfy may have created (and billed) a job.
    ANSWER_LOST = "answer_lost"
    #: The same, with ``on_unknown_submit="resubmit"``: the user pays for it again rather than wait.
    ANSWER_LOST_RESUBMIT = "answer_lost_resubmit"
    #: An intent with no request id whose writer is gone (an earlier try, a stale execution).
    ABANDONED = "abandoned"
    #: The job succeeded and has outputs to keep.
    OUTPUTS_READY = "outputs_ready"
    #: The job succeeded with nothing to keep.
    JOB_SUCCEEDED = "job_succeeded"
    #: The job failed (or timed out, or expired at RunComfy).
    JOB_FAILED = "job_failed"
    #: The job was cancelled (by RunComfy, a user, or this batch's own cancel).
    JOB_CANCELLED = "job_cancelled"
    #: Its outputs are kept in ``output_dir``.
    KEPT = "kept"
    #: Keeping its outputs failed for good (a permanent error, or too many attempts).
    KEEP_FAILED = "keep_failed"
    #: Keeping its outputs failed for a passing reason: counted, and tried again later.
    KEEP_RETRY = "keep_retry"
    #: A new try keeps the outputs of a job that succeeded (not the job again).
    RETRY_KEEP = "retry_keep"
    #: A new try submits it again (``paid_usd`` keeps what the earlier attempt cost).
    RESET = "reset"


#: ``(state before, event) -> state after``. ``None`` is an item the ledger has no record of yet.
TRANSITIONS: Mapping[tuple[str | None, Event], str] = {
    (None, Event.CHECKED): L.READY,
    (None, Event.REJECTED): L.INVALID,
    (L.READY, Event.REJECTED): L.INVALID,
    (L.READY, Event.INTENDED): L.INTENT,
    (L.INTENT, Event.WITHDRAWN): L.READY,
    # A submit's answer lands on this execution's intent, or on the ``unknown`` a newer execution
    # made of it meanwhile (the answer is the better knowledge).
    (L.INTENT, Event.ACCEPTED): L.SUBMITTED,
    (L.UNKNOWN, Event.ACCEPTED): L.SUBMITTED,
    (L.INTENT, Event.NOT_SENT): L.READY,
    (L.UNKNOWN, Event.NOT_SENT): L.READY,
    (L.INTENT, Event.REJECTED): L.INVALID,
    (L.UNKNOWN, Event.REJECTED): L.INVALID,
    (L.INTENT, Event.ANSWER_LOST): L.UNKNOWN,
    (L.UNKNOWN, Event.ANSWER_LOST): L.UNKNOWN,
    (L.INTENT, Event.ANSWER_LOST_RESUBMIT): L.READY,
    (L.UNKNOWN, Event.ANSWER_LOST_RESUBMIT): L.READY,
    (L.INTENT, Event.ABANDONED): L.UNKNOWN,
    (L.SUBMITTED, Event.OUTPUTS_READY): L.FINISHED,
    (L.SUBMITTED, Event.JOB_SUCCEEDED): L.SUCCEEDED,
    (L.SUBMITTED, Event.JOB_FAILED): L.FAILED,
    (L.SUBMITTED, Event.JOB_CANCELLED): L.CANCELLED,
    (L.FINISHED, Event.KEPT): L.SUCCEEDED,
    (L.FINISHED, Event.KEEP_FAILED): L.FAILED,
    (L.FINISHED, Event.KEEP_RETRY): L.FINISHED,
    (L.FAILED, Event.RETRY_KEEP): L.FINISHED,
    (L.FAILED, Event.RESET): L.READY,
    (L.CANCELLED, Event.RESET): L.READY,
    (L.INTENT, Event.RESET): L.READY,
    (L.UNKNOWN, Event.RESET): L.READY,
}

#: Events that leave the state as it is: their ledger line carries no ``state``, only what changed.
STATE_KEPT = frozenset({Event.KEEP_RETRY})


class IllegalTransitionError(RuntimeError):
    """A change of an item's state that ``TRANSITIONS`` does not allow: a bug in this package, not the user's."""


def change(
    event: Event,
    key: str,
    start: Sequence[str | None],
    *,
    guard: Mapping[str, Any] | None = None,
    index: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The ledger event of ``event`` on the item ``key``, applied only while it is in one of ``start``.

    :param start: the states the change may start from (its ``expect``); each must be a row with
        ``event`` leading to the same state.
    :param guard: what else the record must hold for the change to apply (``request_id``, ``owner``).
    :param index: the item's position, written with an item's first record.
    :param fields: the record's fields that change with it (``error``, ``request_id``...).
    :raises IllegalTransitionError: when a start state has no row for ``event``.
    """
    targets = {TRANSITIONS.get((state, event)) for state in start}
    if not start or None in targets or len(targets) != 1:
        allowed = sorted(str(state) for (state, row_event) in TRANSITIONS if row_event is event)
        raise IllegalTransitionError(
            f"Item {key}: no batch item goes from {[str(s) for s in start]} by {event.value!r} (it may start "
            f"from {allowed}). This is a bug in airflow_provider_runcomfy; nothing was written to the ledger."
        )
    reserved = {"key", "index", "state", "expect"} & fields.keys()
    if reserved:
        raise IllegalTransitionError(
            f"Item {key}: {sorted(reserved)} are set by the transition, not by its caller."
        )
    built: dict[str, Any] = {"key": key}
    if index is not None:
        built["index"] = index
    if event not in STATE_KEPT:
        built["state"] = targets.pop()
    built.update(fields)
    built["expect"] = {"state": list(start), **(guard or {})}
    return built
