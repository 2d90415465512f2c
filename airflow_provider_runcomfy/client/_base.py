"""What the sync and async clients share: everything that is not I/O.

A call is described once (``Call``), sent by the twin's own ``_send``, and its
answer turned into a typed model or an error by ``_answers``. So the two clients
are the same code path but for ``await``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel

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
from airflow_provider_runcomfy.client.retry import RetryPolicy

log = logging.getLogger("airflow_provider_runcomfy.client")

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
USER_AGENT = f"airflow-provider-runcomfy/{__version__}"
#: Only the encodings ``_limits`` inflates with a bound (httpx would also offer br and zstd).
ACCEPT_ENCODING = "gzip, deflate"

# The most bytes an API answer may have (inflated), per call. Bodies are counted as they
# arrive, so a larger answer costs at most its cap in memory, never its own size.
#: A submit, status or cancel answer is a few hundred bytes; 256 KiB leaves room for an error
#: ``detail`` listing many problems (the part that matters is its start, and it is cut anyway).
MAX_SMALL_BODY = 256 * 1024
#: Model info carries the model's input JSON Schema: kilobytes, tens of kilobytes with big enums.
MAX_MODEL_BODY = 2 * 1024 * 1024
#: A result lists the outputs: up to ``models.MAX_OUTPUTS`` (10,000) URLs of up to ~1.5 KB each
#: (pre-signed URLs with a session token are ~1.2 KB) plus the rest of ``output``.
MAX_RESULT_BODY = 16 * 1024 * 1024
#: Raw (compressed) bytes read beyond the cap before giving up: gzip of incompressible data
#: is a little larger than the data itself.
RAW_SLACK = 64 * 1024


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
    #: The most bytes its answer may have (inflated); see ``MAX_SMALL_BODY`` and friends.
    max_body: int = MAX_SMALL_BODY


def submit_call(model_id: str, payload: Mapping[str, Any]) -> Call:
    """Describe a submit; it is the one call that is not idempotent."""
    validate_model_id(model_id)
    if not isinstance(payload, Mapping):
        raise errors.InvalidInputError(
            f"The input of {model_id} must be a JSON object (a dict), not {type(payload).__name__}."
        )
    return _call("submit to", "POST", SubmitResponse, model_id=model_id, idempotent=False, json=dict(payload))


def status_call(request_id: str) -> Call:
    """Describe a status read."""
    return _call("status of", "GET", RequestStatus, request_id=request_id, action="status")


def result_call(request_id: str, include_cost: bool = True) -> Call:
    """Describe a result read; ``include_cost`` (the default) adds ``cost`` and ``model_id``.

    Asked for on every read: the cost is what a job was billed, and the model id lets a
    re-attached wait say what it waited for; the answer grows by two small fields.
    """
    return _call(
        "result of",
        "GET",
        RequestResult,
        request_id=request_id,
        action="result",
        params={"include_cost": "true"} if include_cost else {},
        max_body=MAX_RESULT_BODY,
    )


def cancel_call(request_id: str) -> Call:
    """Describe a cancel; repeating one is harmless (cancelling a finished job is a no-op)."""
    return _call("cancel of", "POST", CancelResponse, request_id=request_id, action="cancel")


def model_call(model_id: str) -> Call:
    """Describe a model-info read (also the cheapest authenticated call, used to test a token)."""
    validate_model_id(model_id)
    return _call("info of model", "GET", ModelInfo, model_id=model_id, max_body=MAX_MODEL_BODY)


def _call(
    what: str,
    method: str,
    response_model: type[BaseModel],
    *,
    model_id: str | None = None,
    request_id: str | None = None,
    action: str | None = None,
    **options: Any,
) -> Call:
    """A call on one request, ``/v1/requests/{request_id}/{action}``, or else on one model, ``/v1/models/{model_id}``.

    A request id is checked here; a model id by the caller (a submit checks it before its payload).
    """
    if action is not None:
        request_id = validate_request_id(request_id)
        what, path = f"{what} request {request_id}", f"/v1/requests/{request_id}/{action}"
    else:
        what, path = f"{what} {model_id}", f"/v1/models/{model_id}"
    return Call(what, method, path, response_model, request_id=request_id, model_id=model_id, **options)


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
        problem = token_problem(token.strip())
        if problem:
            # The message never shows the token, nor the character: both are the secret's.
            raise errors.AuthenticationError(
                f"The RunComfy API token in {credential_hint} contains {problem}, which an HTTP "
                "header cannot carry: copy the token again from your RunComfy profile page "
                "(without line breaks or spaces) and save it there."
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
            "headers": {
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
        }


def token_problem(token: str) -> str | None:
    """What in ``token`` cannot go into an ``Authorization`` header, or None when it all can.

    RunComfy's tokens are printable ASCII; a control character (a pasted line break, a tab),
    a space or a non-ASCII character is a copy-and-paste accident, and sending it would fail
    inside the HTTP library with the header -- the token -- in the error text.
    """
    for char in token:
        if char in "\r\n":
            return "a line break"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return "a control character"
        if char == " ":
            return "a space"
        if ord(char) > 0x7E:
            return "a non-ASCII character"
    return None


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
