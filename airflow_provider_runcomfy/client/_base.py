"""What the sync and async clients share: everything that is not I/O.

A call is described once (``Call``), sent by the twin's own ``_send``, and its
response turned into a typed model or an error here. So the two clients are
the same code path but for ``await``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.client import errors
from airflow_provider_runcomfy.client._validation import (
    is_loopback_host,
    validate_model_id,
    validate_request_id,
)
from airflow_provider_runcomfy.client.models import (
    CancelResponse,
    ModelInfo,
    RequestResult,
    RequestStatus,
    SubmitResponse,
)
from airflow_provider_runcomfy.client.retry import RetryPolicy, parse_retry_after

log = logging.getLogger("airflow_provider_runcomfy.client")

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
USER_AGENT = f"airflow-provider-runcomfy/{__version__}"


@dataclass(frozen=True)
class Call:
    """One API call: what to send, how to read the answer, and whether it may be repeated."""

    what: str
    method: str
    path: str
    response_model: type[BaseModel]
    idempotent: bool = True
    json: Mapping[str, Any] | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None
    model_id: str | None = None


def submit_call(model_id: str, payload: Mapping[str, Any]) -> Call:
    """Describe a submit; it is the one call that is not idempotent."""
    validate_model_id(model_id)
    if not isinstance(payload, Mapping):
        raise errors.InvalidInputError(
            f"The input of {model_id} must be a JSON object (a dict), not {type(payload).__name__}."
        )
    return Call(
        what=f"submit to {model_id}",
        method="POST",
        path=f"/v1/models/{model_id}",
        response_model=SubmitResponse,
        idempotent=False,
        json=dict(payload),
        model_id=model_id,
    )


def status_call(request_id: str) -> Call:
    """Describe a status read."""
    validate_request_id(request_id)
    return Call(
        what=f"status of request {request_id}",
        method="GET",
        path=f"/v1/requests/{request_id}/status",
        response_model=RequestStatus,
        request_id=request_id,
    )


def result_call(request_id: str, include_cost: bool = False) -> Call:
    """Describe a result read; ``include_cost`` adds ``cost`` and ``model_id`` to the answer."""
    validate_request_id(request_id)
    return Call(
        what=f"result of request {request_id}",
        method="GET",
        path=f"/v1/requests/{request_id}/result",
        response_model=RequestResult,
        params={"include_cost": "true"} if include_cost else {},
        request_id=request_id,
    )


def cancel_call(request_id: str) -> Call:
    """Describe a cancel; repeating one is harmless (cancelling a finished job is a no-op)."""
    validate_request_id(request_id)
    return Call(
        what=f"cancel of request {request_id}",
        method="POST",
        path=f"/v1/requests/{request_id}/cancel",
        response_model=CancelResponse,
        request_id=request_id,
    )


def model_call(model_id: str) -> Call:
    """Describe a model-info read (also the cheapest authenticated call, used to test a token)."""
    validate_model_id(model_id)
    return Call(
        what=f"info of model {model_id}",
        method="GET",
        path=f"/v1/models/{model_id}",
        response_model=ModelInfo,
        model_id=model_id,
    )


class BearerAuth(httpx.Auth):
    """Adds the token to requests for the API's own origin, and to no other host.

    The client never follows redirects, but the check is here too so that the
    token cannot leak even if someone passes an absolute URL or a redirect-
    following ``httpx`` client of their own.
    """

    def __init__(self, token: str, base_url: str) -> None:
        self._token = token
        self._origin = _origin(base_url)

    def __repr__(self) -> str:
        return f"BearerAuth(origin={self._origin!r}, token='***')"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(str(request.url)) == self._origin:
            request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default_port = {"https": 443, "http": 80}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port or default_port)


@dataclass(frozen=True)
class ClientSettings:
    """How to reach RunComfy: checked once, shared by the sync and async clients.

    :param credential_hint: where the token comes from, named in authentication errors
        (the hook passes "the password of Airflow connection 'runcomfy_default'").
    """

    base_url: str
    token: str = field(repr=False)
    connect_timeout: float
    read_timeout: float
    retry: RetryPolicy
    credential_hint: str

    @classmethod
    def create(
        cls,
        token: str,
        *,
        base_url: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        credential_hint: str = "the RunComfy API token",
    ) -> ClientSettings:
        """Validate and fill in defaults; raises ``InvalidInputError`` on a bad URL or empty token."""
        if not token or not isinstance(token, str) or not token.strip():
            raise errors.AuthenticationError(
                f"No RunComfy API token is set: put the token from your RunComfy profile page in "
                f"{credential_hint}."
            )
        return cls(
            base_url=validate_base_url(base_url or DEFAULT_BASE_URL),
            token=token.strip(),
            connect_timeout=float(connect_timeout or DEFAULT_CONNECT_TIMEOUT),
            read_timeout=float(read_timeout or DEFAULT_READ_TIMEOUT),
            retry=retry or RetryPolicy(),
            credential_hint=credential_hint,
        )

    def httpx_options(self) -> dict[str, Any]:
        """Options for ``httpx.Client``/``AsyncClient``: base URL, auth, timeouts, no redirects."""
        return {
            "base_url": self.base_url,
            "auth": BearerAuth(self.token, self.base_url),
            "timeout": httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            "follow_redirects": False,
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
        }


def validate_base_url(base_url: str) -> str:
    """Accept ``https://host[:port][/prefix]``, or ``http://`` only for a loopback host (the emulator)."""
    url = base_url.strip()
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "it must be an https:// URL"
    elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
        problem = "plain http:// is allowed only for a loopback host (the emulator); use https://"
    elif parts.username or parts.password or parts.query or parts.fragment:
        problem = "it must not carry credentials, a query or a fragment"
    if problem:
        shown = f"{parts.scheme}://{parts.hostname or ''}{parts.path}"
        raise errors.InvalidInputError(f"Invalid RunComfy base URL {shown!r}: {problem}.")
    return url.rstrip("/")


def transport_error(call: Call, error: httpx.TransportError) -> errors.RunComfyError:
    """Name a transport failure; a submit whose request may have been sent cannot be retried."""
    never_sent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    kind = type(error).__name__
    if not call.idempotent and not never_sent:
        return _outcome_unknown(call, f"the connection failed after the request was sent ({kind})")
    return errors.TransportError(
        f"Could not reach RunComfy for the {call.what} ({kind}: {error}); "
        "check the network and the connection's Base URL.",
        request_sent=not never_sent,
        request_id=call.request_id,
    )


def _outcome_unknown(call: Call, reason: str) -> errors.SubmitOutcomeUnknownError:
    return errors.SubmitOutcomeUnknownError(
        f"The {call.what} may have created a job: {reason}. It was not retried, because a second "
        "submit could be billed twice. Look for the job in your RunComfy dashboard (requests) "
        "before running the task again.",
    )


def parse_response(call: Call, response: httpx.Response, settings: ClientSettings) -> Any:
    """Turn an HTTP response into the call's model, or raise the ``RunComfyError`` it means."""
    body = _json_or_none(response)
    error_code = body.get("error_code") if isinstance(body, dict) else None
    if response.is_success and error_code is None and isinstance(body, dict):
        try:
            return call.response_model.model_validate(body)
        except ValidationError as exc:
            raise errors.UnexpectedResponseError(
                f"RunComfy's answer to the {call.what} could not be read "
                f"({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}); "
                "the API may have changed: upgrade airflow-provider-runcomfy.",
                status_code=response.status_code,
                request_id=call.request_id,
            ) from None
    if response.is_success and error_code is None:
        raise errors.UnexpectedResponseError(
            f"RunComfy answered the {call.what} with HTTP {response.status_code} but no JSON object.",
            status_code=response.status_code,
            request_id=call.request_id,
        )
    error = api_error(call, response, body if isinstance(body, dict) else {}, settings)
    if not call.idempotent and isinstance(error, errors.ServerError):
        raise _outcome_unknown(call, f"RunComfy answered with a server error ({error.message})")
    raise error


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
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
    call: Call, response: httpx.Response, body: Mapping[str, Any], settings: ClientSettings
) -> errors.RunComfyError:
    """Choose the error class and message for an error answer (HTTP error, or 200 with ``error_code``)."""
    code = body.get("error_code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    said_text = str(body.get("error_message") or "")[:300]
    detail = body.get("detail")
    status = response.status_code
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
        detail=_describe_detail(detail) or said_text or "no detail given",
        status=status,
        code=f", error {code}" if code is not None else "",
        said=f": RunComfy said {said_text!r}" if said_text else "",
    )
    kwargs: dict[str, Any] = {
        "error_code": code,
        "status_code": status,
        "request_id": call.request_id,
        "retry_after": parse_retry_after(response.headers.get("Retry-After")),
    }
    if cls is errors.InputRejectedError:
        return errors.InputRejectedError(message, detail=detail, **kwargs)
    return cls(message, **kwargs)


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
        return "; ".join(parts)
    return str(detail)[:500]
