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

A host the worker cannot reach costs one attempt per ``host_failure_ttl``, not one per URL:
the first check of a host not yet reached goes alone while the others on that host wait for
it; when it finds no address, a refused connection or no connection in time, every check on
that host in the next ``host_failure_ttl`` seconds is answered at once from that failure
(2,000 inputs on a dead host are 2,000 warnings in milliseconds, not 2,000 timeouts).
Once the host has answered, its checks run concurrently. ``run_ahead`` lets a batch submit its
first items while later ones are still being checked.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.arguments import PreflightMode, check_preflight
from airflow_provider_runcomfy.client._urlpolicy import (
    MAX_REDIRECTS,
    CachingResolver,
    Opener,
    Resolver,
    UrlPolicy,
    resolve,
)
from airflow_provider_runcomfy.client.closing import Closing
from airflow_provider_runcomfy.client.download import OutputDownloadError, OutputTransferError, shown_url
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

#: Seconds a host that could not be reached (no address, refused, no connection in time) is not
#: tried again: its other inputs are "not checked" at once, with the same reason.
HOST_FAILURE_TTL = 30.0

#: Hosts whose state (reached, failed) a pre-flight remembers; the least recently used go first.
MAX_HOSTS = 1024

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
    :param host_failure_ttl: seconds a host that could not be reached is not tried again (and a
        failed DNS lookup not repeated).
    :param clock: seconds, monotonic (tests of the failure TTL).
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
        host_failure_ttl: float = HOST_FAILURE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = check_preflight(mode)
        self.api_base_url = api_base_url
        self.resolver = CachingResolver(
            resolver or resolve, ttl=dns_ttl, failure_ttl=host_failure_ttl, clock=clock
        )
        # A waiting check gives up waiting for the host's first one after what that one may take
        # at most (a HEAD and a GET, each through every redirect), and then tries by itself.
        self.hosts = HostGate(host_failure_ttl, wait=2 * (MAX_REDIRECTS + 1) * timeout + 1.0, clock=clock)
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
        host = host_key(url)
        earlier, probe = self.hosts.enter(host)
        if earlier is not None:
            return self._trouble(where, earlier, started)
        hops = _Hops()
        reached = False
        try:
            result = self._ask(where, url, kind, hops, started)
            reached = True
            return result
        except InputCheckError:  # the host answered, and the answer was bad
            reached = True
            raise
        except _Trouble as trouble:
            # Only the first hop's failure is the host's own: a redirect's target is another host.
            down = trouble.host_down and hops.count <= 1
            if down:
                self.hosts.failed(host, trouble.reason)
            reached = not down and trouble.answered
            return self._trouble(where, trouble.reason, started)
        finally:
            self.hosts.leave(host, probe, reached=reached)

    def _ask(self, where: str, url: str, kind: InputKind, hops: _Hops, started: float) -> PreflightResult:
        """The HEAD, and the ranged GET where it told too little; ``_Trouble`` when they could not tell."""
        try:
            with self._opener.open(url, "HEAD", _WHAT, hops.next) as (_, head):
                if head.status_code in (404, 410):
                    raise _failed(where, "HEAD", head.status_code)
                if head.status_code == 429 or head.status_code >= 500:
                    raise _Trouble(f"HEAD answered HTTP {head.status_code}", answered=True)
                verdict = _verdict(where, kind, head, None) if head.is_success else None
                if verdict is not None:
                    return _result("HEAD", head, verdict, started)
            # HEAD refused (405, 501, a URL signed for GET only) or told too little: look at the bytes.
            hops.count = 0
            with self._opener.open(url, "GET", _WHAT, hops.next, headers=_RANGE) as (_, response):
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Trouble(f"GET answered HTTP {response.status_code}", answered=True)
                if not response.is_success:
                    raise _failed(where, "GET", response.status_code)
                first = _first_bytes(response)
                verdict = _verdict(where, kind, response, first)
                return _result("GET", response, verdict or (None, _total_size(response)), started)
        except httpx.ConnectTimeout:
            raise _Trouble("no connection in time", host_down=True) from None
        except httpx.TimeoutException:
            raise _Trouble("no answer in time", answered=True) from None
        except httpx.ConnectError as error:  # no address, refused, unreachable, a TLS failure
            raise _Trouble(f"{type(error).__name__}: {str(error)[:120]}", host_down=True) from None
        except httpx.RequestError as error:  # reset, cut
            raise _Trouble(f"{type(error).__name__}: {str(error)[:120]}", answered=True) from None
        except OutputTransferError as error:  # the URL rules found no address for the host
            raise _Trouble(error.message, host_down=True) from None
        except OutputDownloadError as error:  # the URL rules refuse it (or a redirect), a redirect loop
            raise _Trouble(error.message) from None

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


class _Hops:
    """Counts the hops of one request (redirects followed), to tell the URL's host from a redirect's.

    Each request has its own timeout, so there is no deadline to check between hops.
    """

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> None:
        self.count += 1


class _Trouble(Exception):
    """The worker could not check the URL (``reason``); not the input's fault.

    :param host_down: the host was not reached at all (no address, refused, no connection in time).
    :param answered: the host answered something (a 5xx, a 429, a cut body): it is there.
    """

    def __init__(self, reason: str, *, host_down: bool = False, answered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host_down = host_down
        self.answered = answered


HostKey = tuple[str, str, int]


def host_key(url: str) -> HostKey | None:
    """``(scheme, host, port)`` of ``url``; None when it has none (the URL rules then refuse it)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed URL: no host to remember anything about
        return None
    if not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


@dataclass
class _HostState:
    reached: bool = False
    failure: str | None = None
    failed_until: float = 0.0
    probe: threading.Event | None = None


class HostGate:
    """What a pre-flight knows of each host: reached, failed (until when), or being tried first.

    Many inputs on one host must not each pay for finding it down: the first check of a host
    not reached yet goes alone (``enter`` hands it a probe), the others wait for it; a failure
    that means the host cannot be reached at all is kept ``failure_ttl`` seconds and answers
    every check on that host until then. A host that answered lets its checks run at once.
    Thread-safe.

    :param failure_ttl: seconds a host's failure answers for it.
    :param wait: seconds a check waits for the host's first check before going by itself.
    :param clock: seconds, monotonic (tests).
    :param max_hosts: hosts remembered (the least recently used are forgotten first).
    """

    def __init__(
        self,
        failure_ttl: float = HOST_FAILURE_TTL,
        *,
        wait: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_hosts: int = MAX_HOSTS,
    ) -> None:
        self.failure_ttl = failure_ttl
        self.wait = wait
        self._clock = clock
        self._max_hosts = max(1, max_hosts)
        self._lock = threading.Lock()
        self._hosts: OrderedDict[HostKey, _HostState] = OrderedDict()

    def enter(self, host: HostKey | None) -> tuple[str | None, threading.Event | None]:
        """``(the host's recent failure, None)``, or ``(None, a probe)`` when this check is the host's first."""
        if host is None or self.failure_ttl <= 0:  # nothing is kept: nothing to wait for either
            return None, None
        until = time.monotonic() + self.wait
        while True:
            with self._lock:
                state = self._state(host)
                if state.failure is not None and state.failed_until > self._clock():
                    return state.failure, None
                if state.reached:
                    return None, None
                if state.probe is None:
                    state.probe = threading.Event()
                    return None, state.probe
                probe = state.probe
            left = until - time.monotonic()
            if left <= 0 or not probe.wait(left):
                return None, None  # the first check is taking too long: go by ourselves

    def failed(self, host: HostKey | None, reason: str) -> None:
        """``host`` could not be reached: say so for its checks of the next ``failure_ttl`` seconds."""
        if host is None or self.failure_ttl <= 0:
            return
        with self._lock:
            state = self._state(host)
            state.reached = False
            state.failure = (
                f"{reason}; an earlier input on {host[1]} found this, so it is not tried again for "
                f"{self.failure_ttl:g} s"
            )
            state.failed_until = self._clock() + self.failure_ttl

    def leave(self, host: HostKey | None, probe: threading.Event | None, *, reached: bool) -> None:
        """The check on ``host`` is over; ``reached``: the host answered (its checks may now run at once)."""
        if host is None:
            return
        with self._lock:
            state = self._state(host)
            if reached:
                state.reached = True
            if probe is not None and state.probe is probe:
                state.probe = None
        if probe is not None:
            probe.set()

    def _state(self, host: HostKey) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState()
            while len(self._hosts) > self._max_hosts:
                self._hosts.popitem(last=False)
        self._hosts.move_to_end(host)
        return state


T = TypeVar("T")
R = TypeVar("R")


def run_ahead(
    work: Callable[[T], R], items: Iterable[T], *, workers: int = 8, ahead: int = 64
) -> Iterator[tuple[T, R | Exception]]:
    """``(item, work(item) or the exception it raised)`` for each of ``items``, in order, worked ``ahead``.

    For a batch that submits while it checks: the first results come as soon as they are
    ready, while at most ``ahead`` later items are being worked on (``workers`` at a time) --
    not after every item was checked. ``items`` is read lazily, so it may stream from a file.
    Closing the iterator early (``break``) cancels what has not started and waits for what has
    (each pre-flight request has its own timeout).

    Example (the batch's first pass)::

        with InputPreparer(check_only=True, ...) as preparer:
            for item, prepared in run_ahead(lambda it: preparer.prepare(model_id, it.input), items):
                ...  # an InvalidInputError: the item is invalid; else it may be submitted now
    """
    window: deque[tuple[T, Future[R]]] = deque()

    def first_done() -> tuple[T, R | Exception]:
        item, future = window.popleft()
        try:
            return item, future.result()
        except Exception as error:
            return item, error

    source = iter(items)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="runcomfy-preflight")
    try:
        for item in source:
            window.append((item, pool.submit(work, item)))
            if len(window) >= max(1, ahead):
                yield first_done()
        while window:
            yield first_done()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
