"""What a RunComfy answer means, and how a wait ended: the one rule every waiter shares.

``finality`` reads one ``/status`` or ``/result`` answer (waiting, finished but not
written yet, succeeded, failed, cancelled); ``Outcome`` is how a wait ended, typed, with
``to_event``/``from_event`` so it crosses the trigger boundary as a small JSON dict and
comes back the same, errors included (by their registered ``kind``). The blocking wait,
the trigger, re-attach, the sensor and the operators all speak these two.

Nothing here imports pydantic or HTTP at runtime: DAG files pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client import errors

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client.models import RequestResult, RequestStatus

#: The longest message an outcome carries: it lands in a trigger event row and a task log.
MAX_MESSAGE_CHARS = 2000


class Finality(StrEnum):
    """What ONE ``/status`` or ``/result`` answer says about a job."""

    #: ``in_queue`` / ``in_progress``: poll again later.
    WAITING = "waiting"
    #: Finished per ``/status`` (``completed``), or ``/result`` still says ``completed`` (the
    #: outcome is written a moment later), or a state word this version does not know:
    #: keep waiting on the same request id -- never submit again.
    NOT_WRITTEN = "not_written"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_outcome(self) -> bool:
        """Whether the answer is the job's outcome (only ``/result`` answers are trusted for it)."""
        return self in (Finality.SUCCEEDED, Finality.FAILED, Finality.CANCELLED)


#: RunComfy's state words -> what they mean. Any other word is ``NOT_WRITTEN``.
_FINALITY = {
    "in_queue": Finality.WAITING,
    "in_progress": Finality.WAITING,
    "completed": Finality.NOT_WRITTEN,
    "succeeded": Finality.SUCCEEDED,
    "failed": Finality.FAILED,
    "cancelled": Finality.CANCELLED,
}


def finality(answer: RequestStatus | RequestResult) -> Finality:
    """What a ``/status`` or ``/result`` answer means; success is decided from ``/result`` only."""
    state = getattr(answer.status, "value", answer.status)
    return _FINALITY.get(str(state), Finality.NOT_WRITTEN)


class OutcomeKind(StrEnum):
    """How a wait ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"


#: The outcome a final ``/result`` answer is.
_RESULT_OUTCOMES = {
    Finality.SUCCEEDED: OutcomeKind.SUCCEEDED,
    Finality.FAILED: OutcomeKind.FAILED,
    Finality.CANCELLED: OutcomeKind.CANCELLED,
}

#: The outcome a client error ending a wait is; any other error is ``ERROR``.
_ERROR_OUTCOMES: dict[type[errors.RunComfyError], OutcomeKind] = {
    errors.JobTimeoutError: OutcomeKind.TIMEOUT,
    errors.JobFailedError: OutcomeKind.FAILED,
    errors.JobCancelledError: OutcomeKind.CANCELLED,
}

#: The error a non-success outcome raises; ``ERROR`` raises the class of its ``error_kind``.
_OUTCOME_ERRORS: dict[OutcomeKind, type[errors.RunComfyError]] = {
    OutcomeKind.FAILED: errors.JobFailedError,
    OutcomeKind.CANCELLED: errors.JobCancelledError,
    OutcomeKind.TIMEOUT: errors.JobTimeoutError,
}


@dataclass(frozen=True)
class Outcome:
    """How the wait for one RunComfy request ended: small, typed, and JSON-safe through ``to_event``.

    :param kind: succeeded, failed, cancelled (RunComfy said so), timeout or error (the wait gave up).
    :param outputs: the output URLs, whatever the model calls them, de-duplicated.
    :param message: what happened and what to do, truncated to ``MAX_MESSAGE_CHARS``.
    :param error_kind: the registered ``kind`` of the client error that ended the wait.
    :param cost_usd: what RunComfy charged, when it said.
    """

    kind: OutcomeKind
    request_id: str
    model_id: str | None = None
    outputs: tuple[str, ...] = ()
    output: dict[str, Any] | None = None
    created_at: str | None = None
    finished_at: str | None = None
    message: str = ""
    error_kind: str | None = None
    cost_usd: float | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the job succeeded (its outputs can be used)."""
        return self.kind is OutcomeKind.SUCCEEDED

    @classmethod
    def from_result(cls, result: RequestResult, model_id: str | None) -> Outcome:
        """The outcome a FINAL ``/result`` answer states; ``ValueError`` for one that is not final."""
        kind = _RESULT_OUTCOMES.get(finality(result))
        if kind is None:
            raise ValueError(
                f"RunComfy request {result.request_id} has no outcome yet "
                f"({getattr(result.status, 'value', result.status)}); keep waiting on it."
            )
        if kind is OutcomeKind.FAILED:
            message = f"RunComfy request {result.request_id} failed: {result.error_message or 'RunComfy gave no reason'}"
        elif kind is OutcomeKind.CANCELLED:
            message = f"RunComfy request {result.request_id} was cancelled before it ran."
        else:
            message = f"RunComfy request {result.request_id} succeeded."
        return cls(
            kind=kind,
            request_id=result.request_id,
            model_id=model_id or result.model_id,
            outputs=tuple(result.output_urls),
            output=result.output,
            created_at=result.created_at,
            finished_at=result.finished_at,
            message=_truncate(message),
            cost_usd=result.cost,
        )

    @classmethod
    def from_error(cls, error: errors.RunComfyError, request_id: str, model_id: str | None) -> Outcome:
        """The outcome of a wait ended by ``error``: a timeout, or RunComfy could not be read."""
        kind = next(
            (kind for cls_, kind in _ERROR_OUTCOMES.items() if isinstance(error, cls_)), OutcomeKind.ERROR
        )
        return cls(
            kind=kind,
            request_id=request_id,
            model_id=model_id,
            message=_truncate(error.message),
            error_kind=error.kind,
        )

    def to_event(self) -> dict[str, Any]:
        """A small JSON dict (a ``TriggerEvent`` payload); ``status`` is the kind."""
        return {
            "status": self.kind.value,
            "request_id": self.request_id,
            "model_id": self.model_id,
            "outputs": list(self.outputs),
            "output": self.output,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "message": self.message,
            "error_kind": self.error_kind,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> Outcome:
        """Read back ``to_event``'s dict (also an event fired by an earlier version of the provider)."""
        request_id = str(event.get("request_id") or "")
        kind = event_kind(event)
        if kind is None:
            return cls(
                kind=OutcomeKind.ERROR,
                request_id=request_id,
                model_id=event.get("model_id"),
                message=_truncate(
                    f"RunComfy request {request_id}: unexpected event {event.get('status')!r}."
                ),
            )
        output = event.get("output")
        cost = event.get("cost_usd")
        return cls(
            kind=kind,
            request_id=request_id,
            model_id=event.get("model_id"),
            outputs=tuple(str(url) for url in event.get("outputs") or ()),
            output=output if isinstance(output, dict) else None,
            created_at=event.get("created_at"),
            finished_at=event.get("finished_at"),
            message=_truncate(str(event.get("message") or "")),
            # ``error_type`` is what events of earlier versions called it (a class name, also its kind).
            error_kind=event.get("error_kind") or event.get("error_type"),
            cost_usd=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        )

    def to_error(self) -> errors.RunComfyError:
        """The error a non-success raises: the same class the wait met, by its registered kind."""
        if self.succeeded:
            raise ValueError(f"RunComfy request {self.request_id} succeeded: there is no error to raise.")
        error_class = _OUTCOME_ERRORS.get(self.kind) or errors.error_class_for_kind(self.error_kind)
        message = self.message or f"RunComfy request {self.request_id}: {self.kind.value}."
        return error_class(message, request_id=self.request_id or None)


def event_kind(event: Mapping[str, Any]) -> OutcomeKind | None:
    """How the wait ``event`` reports ended (``to_event``'s dict, or the part of it a batch keeps).

    None for a ``status`` no version of the provider wrote: the caller treats it as a
    failure. Code that holds an outcome as a dict asks here, never compares its words.
    """
    try:
        return OutcomeKind(str(event.get("status")))
    except ValueError:
        return None


def describe_status(status: RequestStatus) -> str:
    """One log line for a request's state, shared by the trigger and the blocking wait."""
    position = f" (queue position {status.queue_position})" if status.queue_position is not None else ""
    state = getattr(status.status, "value", status.status)
    return f"RunComfy request {status.request_id} is {state}{position}."


def describe_cancel(request_id: str, cancelled: bool) -> str:
    """What a cancel achieved, in words a user can act on."""
    if cancelled:
        return f"RunComfy request {request_id} was cancelled; it will not be billed."
    return (
        f"RunComfy request {request_id} could not be cancelled: it is already running or finished "
        "(RunComfy will finish and bill it)."
    )


def _truncate(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    suffix = " … (message truncated)"
    return text[: MAX_MESSAGE_CHARS - len(suffix)] + suffix
