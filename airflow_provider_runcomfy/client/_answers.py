"""Reading RunComfy's answers: bounded bodies, typed models, and the error each failure means.

Both clients feed an answer's raw chunks to ``BodyReader`` (so the cap holds on the sync
and the async path alike) and hand the result to ``parse_response``; transport failures
go through ``transport_error``. Whether a failed submit may have created a job is decided
here, once: anything but a clear refusal or a request that never left is "outcome unknown".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import ValidationError

from airflow_provider_runcomfy.client import errors
from airflow_provider_runcomfy.client._base import RAW_SLACK, Call, ClientSettings
from airflow_provider_runcomfy.client._limits import (
    BodyEncodingError,
    BodyTooLargeError,
    BoundedDecoder,
    scrub,
    truncate,
)
from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.client.retry import parse_retry_after

#: Transport failures after which the request provably never left: no connection was made,
#: or the request could not even be written (h11 refused it; an unsupported URL).
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
)


def transport_error(
    call: Call,
    error: httpx.TransportError,
    settings: ClientSettings | None = None,
    sent_at: datetime | None = None,
) -> errors.RunComfyError:
    """Name a transport failure; a submit whose request may have been sent cannot be retried.

    The library's own text is cut and scrubbed of the token: some errors quote the request's
    headers.
    """
    never_sent = isinstance(error, _NEVER_SENT)
    kind = type(error).__name__
    if not call.idempotent and not never_sent:
        return outcome_unknown(call, f"the connection failed after the request was sent ({kind})", sent_at)
    text = truncate(scrub(str(error), settings.token if settings else None), 300)
    return errors.TransportError(
        f"Could not reach RunComfy for the {call.what} ({kind}: {text}); "
        "check the network and the connection's Base URL.",
        request_sent=not never_sent,
        request_id=call.request_id,
    )


def outcome_unknown(
    call: Call, reason: str, sent_at: datetime | None = None
) -> errors.SubmitOutcomeUnknownError:
    """The error of a submit that may have created a job: what was sent, when, and how to look."""
    when = (sent_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    fingerprint = input_fingerprint(call.model_id or "", call.json or {})
    shown = f"{when:%Y-%m-%d %H:%M:%S} UTC"
    error = errors.SubmitOutcomeUnknownError(
        f"The {call.what} may have created a job: {reason}. It was not retried, because a second "
        f"submit could be billed twice. The submit was sent at {shown} (input fingerprint "
        f"{fingerprint}). Look in your RunComfy dashboard, under Requests, for a "
        f"{call.model_id or 'job'} request created around {shown} before running the task again: "
        "if it is there, it is running or has run and will be billed.",
    )
    error.model_id = call.model_id
    error.submitted_at = when.isoformat()
    error.input_fingerprint = fingerprint
    return error


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read within its call's cap: ``body`` is None when it was not read whole."""

    status_code: int
    headers: httpx.Headers
    body: bytes | None
    #: Why ``body`` is None (too large, an encoding we do not inflate, broken compressed data).
    problem: str | None = None

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class BodyReader:
    """Reads one answer's body as it arrives, counting it (inflated) against the call's cap.

    Fed the raw chunks (``iter_raw``/``aiter_raw``): the sync and async clients share it, so
    the cap holds on both paths and nothing is read whole before it counts.
    """

    def __init__(self, call: Call, response: httpx.Response) -> None:
        self._response = response
        self._limit = call.max_body
        self._raw = 0
        self._parts: list[bytes] = []
        self.problem: str | None = None
        try:
            self._decoder: BoundedDecoder | None = BoundedDecoder(
                response.headers.get("content-encoding"), self._limit
            )
        except BodyEncodingError as error:
            self._decoder, self.problem = None, str(error)

    def feed(self, chunk: bytes) -> bool:
        """Take the next raw chunk; False when reading should stop (the body will not be used)."""
        if self._decoder is None:
            return False
        self._raw += len(chunk)
        try:
            if self._raw > self._limit + RAW_SLACK:
                raise BodyTooLargeError(self._limit)
            self._parts.extend(self._decoder.feed(chunk))
        except BodyTooLargeError:
            self.problem = f"it is larger than {self._limit} bytes"
        except BodyEncodingError as error:
            self.problem = str(error)
        if self.problem:
            self._decoder, self._parts = None, []
            return False
        return True

    def answer(self) -> Answer:
        """The answer, once the body has ended (or reading stopped)."""
        if self._decoder is not None:
            try:
                self._parts.extend(self._decoder.finish())
            except (BodyTooLargeError, BodyEncodingError) as error:
                self.problem = (
                    f"it is larger than {self._limit} bytes"
                    if isinstance(error, BodyTooLargeError)
                    else str(error)
                )
        body = None if self.problem else b"".join(self._parts)
        return Answer(self._response.status_code, self._response.headers, body, self.problem)


def parse_response(
    call: Call, answer: Answer, settings: ClientSettings, sent_at: datetime | None = None
) -> Any:
    """Turn an answer into the call's model, or raise the ``RunComfyError`` it means.

    A submit answered 2xx that cannot be read -- too large, not JSON, an id that fails the
    pattern -- may have created a job: it is "outcome unknown", never retried.
    """
    body = _json_or_none(answer.body)
    error_code = body.get("error_code") if isinstance(body, dict) else None
    if answer.is_success and error_code is None:
        problem = _unreadable(call, answer, body)
        if isinstance(problem, str):
            if not call.idempotent:
                raise outcome_unknown(call, f"its answer (HTTP {answer.status_code}) {problem}", sent_at)
            raise errors.UnexpectedResponseError(
                f"RunComfy's answer to the {call.what} (HTTP {answer.status_code}) {problem}; "
                "the API may have changed: upgrade airflow-provider-runcomfy.",
                status_code=answer.status_code,
                request_id=call.request_id,
            )
        return problem
    error = api_error(call, answer, body if isinstance(body, dict) else {}, settings)
    if not call.idempotent and isinstance(error, errors.ServerError):
        raise outcome_unknown(call, f"RunComfy answered with a server error ({error.message})", sent_at)
    raise error


def _unreadable(call: Call, answer: Answer, body: Any) -> Any:
    """The call's model read from a 2xx ``body``, or a string saying why it cannot be read."""
    if answer.problem:
        return f"could not be read: {answer.problem}"
    if not isinstance(body, dict):
        return "is not a JSON object"
    try:
        return call.response_model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
        return (
            f"could not be read ({exc.error_count()} problem(s), first: {where}: "
            f"{truncate(first['msg'], 200)})"
        )


def _json_or_none(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


# error_code -> (error class, what to tell the user). The one table of RunComfy's documented codes.
_ERROR_CODES: dict[int, tuple[type[errors.RunComfyError], str]] = {
    400001: (
        errors.InvalidModelError,
        "RunComfy does not know the model {model} (error 400001): check the model id on the "
        "model's API page.",
    ),
    400002: (
        errors.InsufficientBalanceError,
        "Your RunComfy account has no balance left (error 400002): top up your RunComfy balance, "
        "then run the task again.",
    ),
    400004: (
        errors.AuthenticationError,
        "RunComfy rejected the API token (error 400004: missing, expired or revoked token, or an "
        "inactive account): put a valid token from your RunComfy profile page in {credential}.",
    ),
    403001: (
        errors.PermissionDeniedError,
        "Request {request} belongs to another RunComfy user (error 403001): use the token of the "
        "account that submitted it.",
    ),
    404001: (
        errors.RequestNotFoundError,
        "RunComfy has no request {request} (error 404001): the id is wrong or the request has "
        "expired; submit the job again if you still need its output.",
    ),
    422001: (
        errors.InputRejectedError,
        "RunComfy rejected the input for {model} (error 422001): {detail}. Fix these fields.",
    ),
    500001: (
        errors.ServerError,
        "RunComfy had an internal error (error 500001) on the {what}; it is retried with backoff, "
        "and if it persists, try again later.",
    ),
}

# HTTP status -> error, for answers without a known error_code.
_HTTP_STATUSES: dict[int, tuple[type[errors.RunComfyError], str]] = {
    400: (errors.RunComfyError, "RunComfy refused the {what} as a bad request (HTTP 400){said}."),
    401: (
        errors.AuthenticationError,
        "RunComfy refused the API token (HTTP 401): put a valid token from your RunComfy profile "
        "page in {credential}.",
    ),
    403: (
        errors.PermissionDeniedError,
        "RunComfy denied the {what} (HTTP 403){said}: check that the token in {credential} belongs "
        "to the account that owns this request.",
    ),
    404: (errors.RequestNotFoundError, "RunComfy found nothing for the {what} (HTTP 404){said}."),
    422: (errors.InputRejectedError, "RunComfy rejected the input for {model} (HTTP 422): {detail}."),
    429: (
        errors.RateLimitedError,
        "RunComfy is rate-limiting this account (HTTP 429) on the {what}: lower the number of "
        "concurrent tasks (an Airflow pool) or wait.",
    ),
}


def api_error(
    call: Call, answer: Answer, body: Mapping[str, Any], settings: ClientSettings
) -> errors.RunComfyError:
    """Choose the error class and message for an error answer (HTTP error, or 200 with ``error_code``).

    RunComfy's texts (``error_message``, ``detail``) are cut here, where the message is built:
    a megabyte of ``detail`` must not reach a trigger event or a log line.
    """
    code = body.get("error_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    said_text = truncate(body.get("error_message") or "", 300)
    unread = f"its explanation was not read: {answer.problem}" if answer.problem else ""
    detail = bounded_detail(body.get("detail"))
    status = answer.status_code
    if code in _ERROR_CODES:
        cls, template = _ERROR_CODES[code]
    elif status in _HTTP_STATUSES:
        cls, template = _HTTP_STATUSES[status]
    elif status >= 500 or status == 200:
        # A 200 carrying an unknown error_code is RunComfy saying "error" on a path that
        # answers 200; treat it like a server error so reads are retried, submits are not.
        cls, template = errors.ServerError, "RunComfy failed on the {what} (HTTP {status}{code}){said}."
    else:
        cls, template = errors.RunComfyError, "RunComfy refused the {what} (HTTP {status}{code}){said}."
    message = template.format(
        what=call.what,
        model=call.model_id or "this model",
        request=call.request_id or "",
        credential=settings.credential_hint,
        detail=_describe_detail(detail) or said_text or unread or "no detail given",
        status=status,
        code=f", error {code}" if code is not None else "",
        said=f": RunComfy said {said_text!r}" if said_text else (f"; {unread}" if unread else ""),
    )
    kwargs: dict[str, Any] = {
        "error_code": code,
        "status_code": status,
        "request_id": call.request_id,
        "retry_after": parse_retry_after(answer.headers.get("Retry-After")),
    }
    if cls is errors.InputRejectedError:
        return errors.InputRejectedError(message, detail=detail, **kwargs)
    return cls(message, **kwargs)


def bounded_detail(detail: Any) -> Any:
    """A small copy of a 422 ``detail``: at most 20 problems, each ``loc``/``msg``/``type`` cut short.

    What else an item carries (FastAPI echoes the offending ``input``, which can be a data URI
    of megabytes) is dropped; text ``detail`` is cut to ``MAX_TEXT`` characters.
    """
    if detail is None or detail == "":
        return None
    if isinstance(detail, list):
        items: list[Any] = []
        for item in detail[:20]:
            if isinstance(item, dict):
                loc = item.get("loc")
                items.append(
                    {
                        "loc": [truncate(p, 100) if isinstance(p, str) else p for p in loc[:10]]
                        if isinstance(loc, list)
                        else [],
                        "msg": truncate(item.get("msg", ""), 300),
                        "type": truncate(item.get("type", ""), 100),
                    }
                )
            else:
                items.append(truncate(item, 300))
        return items
    return truncate(detail)


def _describe_detail(detail: Any) -> str | None:
    """Render 422 ``detail`` (FastAPI-style list of ``{loc, msg}``, or text) as ``field: problem``."""
    if not detail:
        return None
    if isinstance(detail, list):
        parts = []
        for item in detail[:10]:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body",)]
                parts.append(f"{'.'.join(loc) or 'input'}: {item.get('msg', item)}")
            else:
                parts.append(str(item))
        return truncate("; ".join(parts))
    return truncate(detail, 500)
