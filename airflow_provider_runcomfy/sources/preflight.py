"""Pre-flight of https inputs: one cheap request per URL before the paid submit.

RunComfy fetches each input URL only once the job runs, so a dead link
costs a queued (and maybe billed) job and minutes of waiting. The worker
asks first: a ``HEAD`` (no body), or, where the host refuses ``HEAD`` (405,
501, or a 4xx from a URL signed for ``GET`` only), a ``GET`` of the first 16
bytes. Then:

* 404, 410 or another 4xx (but 408 and 429) fails the task before paying,
  naming the field, the URL (without its query: it may hold a signature) and
  the status;
* a body that is not an image (an HTML error page, JSON) fails it too, for
  an image field (and an error page for a video or audio field);
  ``application/octet-stream`` is judged by its first bytes;
* a size over RunComfy's guide fails it;
* the worker not reaching the host at all (DNS, refused, timeout, 5xx, 429,
  a redirect the URL policy refuses) is logged as a warning and the submit
  goes ahead: workers often cannot reach hosts RunComfy can.
  ``preflight="strict"`` makes that an error; ``preflight="off"`` skips all this.

Requests go through the same machinery as output downloads (``client._urlpolicy``'s
``Opener``): the URL rules (https; http and loopback or private addresses only while
the API itself is on loopback, i.e. the emulator; no credentials in the URL) on every
redirect, followed here rather than by httpx; the connection pinned to the addresses
that were checked, so a DNS answer that changes after the check (DNS rebinding) cannot
send the request to the worker's own or its network's hosts; no token, ever. A batch
resolves each host once a minute (``CachingResolver``), not once per URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.arguments import PreflightMode, check_preflight
from airflow_provider_runcomfy.client._urlpolicy import CachingResolver, Opener, Resolver, UrlPolicy, resolve
from airflow_provider_runcomfy.client.closing import Closing
from airflow_provider_runcomfy.client.download import OutputDownloadError, shown_url
from airflow_provider_runcomfy.sources.errors import InputCheckError, InputUnreachableError
from airflow_provider_runcomfy.sources.images import (
    MAGIC_LENGTH,
    SIZE_GUIDES,
    InputKind,
    describe_size,
    sniff_image,
)

#: Seconds for one pre-flight request: short, since a healthy host answers a HEAD at once.
DEFAULT_PREFLIGHT_TIMEOUT = 5.0

#: Seconds a host's addresses are reused across a batch's URLs.
DNS_TTL = 60.0

_USER_AGENT = f"airflow-provider-runcomfy/{__version__} (input pre-flight)"
#: Identity asked for: ``Content-Length`` is then the file's size, and the first bytes its own.
_HEADERS = {
    "User-Agent": _USER_AGENT,
    "Accept": "image/*, video/*, */*;q=0.1",
    "Accept-Encoding": "identity",
}
_RANGE = {"Range": f"bytes=0-{MAGIC_LENGTH - 1}"}
_WHAT = "the input"
_UNTYPED = ("", "application/octet-stream", "binary/octet-stream")
#: What an error page is served as: never a model's input, whatever the field.
_ERROR_PAGE_TYPES = ("text/html", "application/json", "application/xml", "text/xml", "text/plain")


@dataclass(frozen=True)
class PreflightResult:
    """What the pre-flight of one URL found.

    :param method: the request that decided (``HEAD`` or ``GET``).
    :param status: its HTTP status (None when the host was not reached).
    :param media_type: the type the answer declared, or that its first bytes showed.
    :param size: the file's size when the answer said it.
    :param warning: why the URL could not be checked (the submit went ahead), or None.
    :param seconds: how long the check took.
    """

    method: str
    status: int | None
    media_type: str | None
    size: int | None
    warning: str | None
    seconds: float

    def describe(self) -> str:
        """``HEAD 200 image/png, 1.2 MB in 12 ms``, for the task log."""
        if self.warning:
            return f"not checked ({self.warning})"
        size = f", {describe_size(self.size)}" if self.size is not None else ""
        return f"{self.method} {self.status} {self.media_type or 'untyped'}{size} in {self.seconds * 1000:.0f} ms"


class Preflight(Closing):
    """Checks https inputs before a submit; one per task (or batch), closed after use; thread-safe.

    :param mode: ``warn`` (network trouble is a warning), ``strict`` (it is an error).
    :param api_base_url: the RunComfy API's base URL (the connection's host); None: RunComfy's own.
        The URL rules allow loopback and private hosts only when the API is on loopback.
    :param timeout: seconds for each request.
    :param max_connections: connections kept open at once (a batch checks URLs concurrently).
    :param transport: an ``httpx`` transport, for tests of what no real server does
        (connections then go where it sends them: no address pinning).
    :param resolver: resolves host names for the URL rules (``socket.getaddrinfo`` by default);
        each answer is reused for ``dns_ttl`` seconds by this pre-flight.
    :param dns_ttl: seconds a host's addresses are reused.
    """

    def __init__(
        self,
        *,
        mode: PreflightMode = "warn",
        api_base_url: str | None = None,
        timeout: float = DEFAULT_PREFLIGHT_TIMEOUT,
        max_connections: int = 8,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
        dns_ttl: float = DNS_TTL,
    ) -> None:
        self.mode = check_preflight(mode)
        self.api_base_url = api_base_url
        self.resolver = CachingResolver(resolver or resolve, ttl=dns_ttl)
        self.policy = UrlPolicy(api_base_url, self.resolver)
        # No httpx.Client: redirects are followed by the Opener, each hop checked and pinned;
        # no auth, cookies or default headers shared with anything.
        self._opener = Opener(
            self.policy,
            httpx.Timeout(timeout),
            _HEADERS,
            transport,
            limits=httpx.Limits(max_connections=max_connections),
        )

    def close(self) -> None:
        """Close the connections."""
        self._opener.close()

    def check(self, field: str, url: str, kind: InputKind) -> PreflightResult:
        """Check ``url`` (the input ``field``, which takes a ``kind``); raise ``InputCheckError`` when bad."""
        started = time.perf_counter()
        where = f"{field} {shown_url(url)}"
        try:
            with self._opener.open(url, "HEAD", _WHAT, _no_deadline) as (_, head):
                if head.status_code in (404, 410):
                    raise _failed(where, "HEAD", head.status_code)
                if head.status_code == 429 or head.status_code >= 500:
                    return self._trouble(where, f"HEAD answered HTTP {head.status_code}", started)
                verdict = _verdict(where, kind, head, None) if head.is_success else None
                if verdict is not None:
                    return _result("HEAD", head, verdict, started)
            # HEAD refused (405, 501, a URL signed for GET only) or told too little: look at the bytes.
            with self._opener.open(url, "GET", _WHAT, _no_deadline, headers=_RANGE) as (_, response):
                if response.status_code == 429 or response.status_code >= 500:
                    return self._trouble(where, f"GET answered HTTP {response.status_code}", started)
                if not response.is_success:
                    raise _failed(where, "GET", response.status_code)
                first = _first_bytes(response)
                verdict = _verdict(where, kind, response, first)
                return _result("GET", response, verdict or (None, _total_size(response)), started)
        except httpx.TimeoutException:
            return self._trouble(where, "no answer in time", started)
        except httpx.RequestError as error:  # refused, reset, a TLS failure
            return self._trouble(where, f"{type(error).__name__}: {str(error)[:120]}", started)
        except OutputDownloadError as error:  # the URL rules refuse it (or a redirect), no DNS, redirect loop
            return self._trouble(where, error.message, started)

    def _trouble(self, where: str, reason: str, started: float) -> PreflightResult:
        if self.mode == "strict":
            raise InputUnreachableError(
                f"Pre-flight of {where}: the worker could not check it ({reason}); with "
                "preflight='strict' that fails the task. Use preflight='warn' to submit anyway "
                "when the worker cannot reach hosts RunComfy can."
            )
        return PreflightResult("HEAD", None, None, None, reason, time.perf_counter() - started)


def _verdict(
    where: str, kind: InputKind, response: httpx.Response, first: bytes | None
) -> tuple[str | None, int | None] | None:
    """``(media type, size)`` of an acceptable answer; ``None`` when its first bytes are needed; raises when bad."""
    declared = response.headers.get("content-type", "").split(";")[0].strip().lower()
    size = _total_size(response)
    media: str | None = declared or None
    # A field of unknown kind ("file") may take any document: only images and media are judged.
    if (kind != "file" and declared in _ERROR_PAGE_TYPES) or (
        kind == "image" and declared not in _UNTYPED and not declared.startswith("image/")
    ):
        raise InputCheckError(
            f"Pre-flight of {where}: it answered {response.request.method} {response.status_code} with "
            f"Content-Type {declared!r}, not {'an image' if kind == 'image' else 'a media file'}: the URL "
            "most likely leads to a web page or an error rather than the file. Check the link."
        )
    if kind == "image" and declared in _UNTYPED:
        if first is None:
            return None
        media = sniff_image(first)
        if media is None:
            raise InputCheckError(
                f"Pre-flight of {where}: it answered {response.status_code} without an image type, and "
                f"its first bytes ({first[:8]!r}) are not a PNG, JPEG or WebP image. Check the link."
            )
    guide = SIZE_GUIDES[kind]
    if size is not None and size > guide:
        raise InputCheckError(
            f"Pre-flight of {where}: it is {describe_size(size)}, over RunComfy's guide of "
            f"{describe_size(guide)} for {'an ' if kind == 'image' else 'a '}{kind}; scale it down."
        )
    return media, size


def _failed(where: str, method: str, status: int) -> InputCheckError:
    return InputCheckError(
        f"Pre-flight of {where}: {method} answered HTTP {status}, so RunComfy could not fetch it "
        "either; nothing was submitted. Check the URL (has it expired?), or pass preflight='off' "
        "if only the worker is refused.",
        status_code=status,
    )


def _result(
    method: str, response: httpx.Response, verdict: tuple[str | None, int | None], started: float
) -> PreflightResult:
    media, size = verdict
    return PreflightResult(method, response.status_code, media, size, None, time.perf_counter() - started)


def _no_deadline() -> None:
    """Each request has its own timeout; a check is a HEAD and a ranged GET at most."""


def _first_bytes(response: httpx.Response) -> bytes:
    """At most ``MAGIC_LENGTH`` bytes of the body; a host that ignores ``Range`` is not read further."""
    first = b""
    # A response built in memory (a test's MockTransport) was read when it was made.
    chunks = response.stream if response.is_stream_consumed else response.iter_raw()
    for chunk in chunks:  # type: ignore[union-attr]
        first += chunk
        if len(first) >= MAGIC_LENGTH:
            break
    return first[:MAGIC_LENGTH]


def _total_size(response: httpx.Response) -> int | None:
    """The file's size: the total of ``Content-Range`` (a 206), else ``Content-Length``."""
    content_range = response.headers.get("content-range", "")
    total = content_range.rpartition("/")[2].strip()
    if response.status_code == 206:
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "").strip()
    return int(length) if length.isdigit() else None
