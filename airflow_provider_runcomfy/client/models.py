"""Typed views of RunComfy's responses, and the one table of what each state means.

Responses become these models at the client boundary; nothing above the
client reads raw JSON. Unknown extra fields are kept (``extra="allow"``) so a
field RunComfy adds later is not lost on the way to XCom.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from airflow_provider_runcomfy.client._limits import MAX_TEXT, truncate
from airflow_provider_runcomfy.client._validation import REQUEST_ID_PATTERN
from airflow_provider_runcomfy.client.redact import redact_value

#: Keys of a model's ``output`` object that hold output URLs, in the order they are listed.
OUTPUT_URL_KEYS = ("image", "images", "video", "videos")

#: The most output URLs a result may list. RunComfy's models make 1 to 4 images or one video;
#: a result listing more than this is refused as unreadable rather than carried to every
#: waiter, event and XCom (a batch of thousands of outputs still fits).
MAX_OUTPUTS = 10_000

#: A job's ``error`` larger than this (as text) is kept as its description only, cut short.
_MAX_ERROR_CHARS = 4000


class RequestState(StrEnum):
    """Every state word RunComfy uses on ``/status`` or ``/result``.

    ``/status`` says ``completed`` for a finished job and only ``/result`` says
    whether it ``succeeded`` or ``failed``, so success is always decided from
    ``/result``. ``failed``/``succeeded`` are accepted on ``/status`` too: the
    docs are silent about failed jobs there, and RunComfy's own CLI accepts them.
    What each word means for a waiter is ``client.outcome.finality``'s alone.
    """

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


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

    @field_validator("error", mode="before")
    @classmethod
    def _bounded_error(cls, value: Any) -> Any:
        # RunComfy's ``error`` of a failed job reaches messages, events and logs: a text is cut,
        # and an object too large to carry is replaced by its description, cut.
        if isinstance(value, str):
            return truncate(value, _MAX_ERROR_CHARS)
        if (
            isinstance(value, dict | list)
            and len(repr_bounded(value, _MAX_ERROR_CHARS + 1)) > _MAX_ERROR_CHARS
        ):
            return truncate(describe_error(value) or "", _MAX_ERROR_CHARS)
        return redact_value(value)  # kept as data: its texts lose their credentials too

    @field_validator("cost", mode="before")
    @classmethod
    def _finite_cost(cls, value: Any) -> Any:
        return _amount_or_none(value)

    @model_validator(mode="after")
    def _bounded_outputs(self) -> RequestResult:
        count = 0
        for key in OUTPUT_URL_KEYS:
            value = (self.output or {}).get(key)
            count += len(value) if isinstance(value, list) else int(value is not None)
        if count > MAX_OUTPUTS:
            raise ValueError(
                f"the result lists {count} outputs, more than the {MAX_OUTPUTS} this provider reads"
            )
        return self

    @property
    def output_urls(self) -> list[str]:
        """The output URLs, whatever the model calls them (``image``/``images``/``video``/``videos``).

        In order, each once (a dict keeps the first place of each URL: linear, where a list
        membership test per URL took seconds for tens of thousands of URLs).
        """
        urls: dict[str, None] = {}
        for key in OUTPUT_URL_KEYS:
            value = (self.output or {}).get(key)
            for url in value if isinstance(value, list) else [value]:
                if isinstance(url, str) and url:
                    urls.setdefault(url, None)
        return list(urls)

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
    """A model's description, input schema and price, from ``GET /v1/models/{model_id}``.

    RunComfy does not document this endpoint (its own clients read it), so every field
    is optional and read leniently: a price that is not a finite, non-negative number,
    or a schema that is not a JSON object, becomes ``None`` ("not known") instead of
    making the whole answer unreadable -- the schema stays usable when the price is
    odd, and a budget never trusts a price it cannot read.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model_id: str | None = None
    name: str | None = None
    #: The JSON Schema of the model's input (RunComfy's Zapier integration validates with it).
    input_schema: dict[str, Any] | None = None
    #: The price of one ``price_unit``, in USD.
    base_price_usd: float | None = None
    #: What ``base_price_usd`` is charged per: ``image``, ``second`` (of video) or ``request``.
    price_unit: str | None = None
    #: RunComfy's own words on the price, e.g. "per second of output video".
    pricing_note: str | None = None

    @field_validator("input_schema", mode="before")
    @classmethod
    def _schema_object(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else None

    @field_validator("base_price_usd", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Any:
        return _amount_or_none(value)

    @field_validator("price_unit", mode="before")
    @classmethod
    def _unit(cls, value: Any) -> Any:
        # "per_image", "Image" and "images" all mean the same unit.
        if not isinstance(value, str):
            return None
        unit = value.strip().lower().removeprefix("per_").removeprefix("per ")
        return unit.removesuffix("s") or None

    @field_validator("model_id", "name", "pricing_note", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return value[:500] if isinstance(value, str) else None


def describe_error(error: Any, _depth: int = 0) -> str | None:
    """Turn an ``error`` value of unknown shape (text, object or list) into one line of text.

    At most ``MAX_TEXT`` characters, however large or deeply nested ``error`` is.
    """
    if error is None or error == "" or error == {}:
        return None
    if _depth > 4:
        return repr_bounded(error, 200)
    if isinstance(error, str):
        return truncate(error, MAX_TEXT)
    if isinstance(error, dict):
        for key in ("message", "error_message", "detail", "msg", "reason"):
            if error.get(key):
                return describe_error(error[key], _depth + 1)
        pairs = (f"{k}={repr_bounded(v, 200)}" for k, v in list(error.items())[:20])
        return truncate(", ".join(pairs), MAX_TEXT)
    if isinstance(error, list):
        parts = (describe_error(e, _depth + 1) for e in error[:20])
        return truncate("; ".join(filter(None, parts)), MAX_TEXT)
    return truncate(repr_bounded(error, MAX_TEXT + 1), MAX_TEXT)


def repr_bounded(value: Any, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters, without building the whole text of a huge value."""
    if isinstance(value, dict | list) and len(value) > 50:
        value = list(value.items())[:50] if isinstance(value, dict) else value[:50]
    try:
        text = str(value)
    except RecursionError:
        return "(too deeply nested to show)"
    return text[:limit]


def _amount_or_none(value: Any) -> float | None:
    """A cost or price in USD: a finite, non-negative number, else None ("not said").

    NaN would poison every sum it enters (it fails both comparisons below); infinity fails the second.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = float(value)
    except ValueError:
        return None
    return amount if 0 <= amount < float("inf") else None
