"""Typed views of RunComfy's responses, and the one table of what each state means.

Responses become these models at the client boundary; nothing above the
client reads raw JSON. Unknown extra fields are kept (``extra="allow"``) so a
field RunComfy adds later is not lost on the way to XCom.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from airflow_provider_runcomfy.client._validation import REQUEST_ID_PATTERN

#: Keys of a model's ``output`` object that hold output URLs, in the order they are listed.
OUTPUT_URL_KEYS = ("image", "images", "video", "videos")


class RequestState(StrEnum):
    """Every state word RunComfy uses on ``/status`` or ``/result``.

    ``/status`` says ``completed`` for a finished job and only ``/result`` says
    whether it ``succeeded`` or ``failed``, so success is always decided from
    ``/result``. ``failed``/``succeeded`` are accepted on ``/status`` too: the
    docs are silent about failed jobs there, and RunComfy's own CLI accepts them.
    """

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_waiting(self) -> bool:
        """RunComfy is still working on it: poll again later."""
        return self in (RequestState.IN_QUEUE, RequestState.IN_PROGRESS)

    @property
    def is_finished(self) -> bool:
        """Nothing will change any more: fetch ``/result`` to learn the outcome."""
        return not self.is_waiting


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    request_id: str

    @field_validator("request_id")
    @classmethod
    def _safe_request_id(cls, value: str) -> str:
        # The id goes into later URLs; refuse one that could change their path.
        if not REQUEST_ID_PATTERN.fullmatch(value):
            raise ValueError("request_id is not 1-128 characters of [A-Za-z0-9_-]")
        return value


class SubmitResponse(_Response):
    """What a submit returns: the new job's id and its URLs."""

    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None


class RequestStatus(_Response):
    """The current state of a job; ``queue_position`` is set only while ``in_queue``."""

    status: RequestState
    queue_position: int | None = None


class RequestResult(_Response):
    """A job's final output, or its current state while unfinished."""

    status: RequestState
    output: dict[str, Any] | None = None
    created_at: str | None = None
    finished_at: str | None = None
    error: Any = None
    cost: float | None = None
    model_id: str | None = None

    @property
    def output_urls(self) -> list[str]:
        """The output URLs, whatever the model calls them (``image``/``images``/``video``/``videos``)."""
        urls: list[str] = []
        for key in OUTPUT_URL_KEYS:
            value = (self.output or {}).get(key)
            for url in value if isinstance(value, list) else [value]:
                if isinstance(url, str) and url and url not in urls:
                    urls.append(url)
        return urls

    @property
    def error_message(self) -> str | None:
        """RunComfy's reason for a failed job, as text; its ``error`` shape is undocumented."""
        return describe_error(self.error)


class CancelResponse(_Response):
    """The answer to a cancel: ``outcome`` is ``cancelled`` or ``not_cancellable``."""

    status: str | None = None
    outcome: str

    @property
    def cancelled(self) -> bool:
        """Whether RunComfy cancelled the job (so it will not be billed)."""
        return self.outcome == "cancelled"


class ModelInfo(BaseModel):
    """A model's description and price, from ``GET /v1/models/{model_id}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model_id: str | None = None
    base_price_usd: float | None = None
    price_unit: str | None = None


def describe_error(error: Any) -> str | None:
    """Turn an ``error`` value of unknown shape (text, object or list) into one line of text."""
    if error is None or error == "" or error == {}:
        return None
    if isinstance(error, str):
        return error
    if isinstance(error, dict):
        for key in ("message", "error_message", "detail", "msg", "reason"):
            if error.get(key):
                return describe_error(error[key])
        return ", ".join(f"{k}={v}" for k, v in error.items())
    if isinstance(error, list):
        return "; ".join(filter(None, (describe_error(e) for e in error)))
    return str(error)
