"""Fetching files the provider needs by itself: streamed, capped, policy-checked, never authenticated.

RunComfy's output URLs are public and temporary, so a pipeline copies the
files it wants to keep. The copy is fetched here by plain ``httpx`` transports
of its own -- never the API client -- so the API token cannot reach an output
host, whatever the URL says (a URL carrying ``user:password@`` is refused too,
since httpx would turn it into an ``Authorization`` header).

Every URL, and every redirect, passes the URL policy first (``_urlpolicy``:
https only, public addresses only, never https to http; the emulator's plain
http on loopback only while the API itself is there), and the connection goes
to the address that was checked. ``check_fetch_url``, ``fetch`` and ``head``
offer the same rules to other parts of the provider (input pre-flights).

A download is streamed: the bytes go to a writable "sink" the caller opens
(a local temp file, an object-store upload), chunk by chunk, while their
size is counted against a cap -- after any ``Content-Encoding`` is undone, a
bounded piece at a time, so a compressed bomb costs no more than the cap --
and their sha256 computed; the whole download has a deadline, not only each
read. The sink is opened only once the response's headers passed every
check, so a refused download leaves nothing behind. Where the bytes land,
and under which name, is the caller's business (``outputs.storage``).

This module knows nothing of Airflow.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import Retrying

from airflow_provider_runcomfy import __version__, policy
from airflow_provider_runcomfy.arguments import check_max_output_bytes
from airflow_provider_runcomfy.client._limits import (
    BodyEncodingError,
    BodyTooLargeError,
    BoundedDecoder,
    truncate,
)
from airflow_provider_runcomfy.client._media import media_type, shown_url
from airflow_provider_runcomfy.client._urlpolicy import (
    CachingResolver,
    Opener,
    Resolver,
    UrlPolicy,
    check_fetch_url,
    check_output_url,
    checked,
    resolve,
)
from airflow_provider_runcomfy.client.closing import Closing
from airflow_provider_runcomfy.client.errors import (
    OutputContentTypeError,
    OutputDownloadError,
    OutputTimeoutError,
    OutputTooLargeError,
    OutputTransferError,
    OutputUnavailableError,
    OutputURLRejectedError,
)
from airflow_provider_runcomfy.client.retry import RetryPolicy, parse_retry_after

# The errors live in ``errors`` with the others; they are part of this module's interface too.
__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "Download",
    "Fetched",
    "OpenSink",
    "OutputContentTypeError",
    "OutputDownloadError",
    "OutputDownloader",
    "OutputTimeoutError",
    "OutputTooLargeError",
    "OutputTransferError",
    "OutputURLRejectedError",
    "OutputUnavailableError",
    "Sink",
    "check_fetch_url",
    "check_max_output_bytes",
    "check_output_url",
    "fetch",
    "head",
    "media_type",
    "shown_url",
]

#: The default cap on one output file: well above a 4K image or a short video clip, far
#: below what would fill a worker's disk by accident.
DEFAULT_MAX_OUTPUT_BYTES = 200_000_000

#: Attempts at one output file (the first included) before the task gives up on it (``policy``).
DOWNLOAD_ATTEMPTS = policy.DOWNLOAD_ATTEMPTS

#: How much is read and written at a time: memory stays flat whatever the file's size.
CHUNK_SIZE = 1024 * 1024

#: Files announced at least this large are hashed and written on a second thread while the
#: next bytes arrive (``_write_behind``); smaller ones are not worth a thread.
WRITE_BEHIND_BYTES = 8 * 1024 * 1024

#: ``CHUNK_SIZE`` batches waiting for that thread at most: the memory a copy may hold.
WRITE_BEHIND_BATCHES = 4

#: The longest one output download may take, retries included (a 200 MB video at 250 KB/s).
DEFAULT_MAX_SECONDS = 900.0

#: The default cap of ``fetch`` (an input picture: RunComfy's guide size is up to 50 MB).
DEFAULT_FETCH_BYTES = 50_000_000

_USER_AGENT = f"airflow-provider-runcomfy/{__version__} (output download)"
#: Identity asked for: pictures and videos are compressed already. A server that encodes anyway
#: is inflated with a bound (``_limits``), never by a decoder without one.
_HEADERS = {
    "User-Agent": _USER_AGENT,
    "Accept": "image/*, video/*, */*;q=0.1",
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class Download:
    """What was fetched: enough to name the copy and to recognise it later.

    :param source_url: the URL asked for (before any redirect).
    :param bytes: the number of bytes written to the sink.
    :param sha256: their sha256, hex.
    :param content_type: the media type the file was accepted as (for an ``application/octet-stream``
        answer, the type the URL's extension names).
    :param extension: the file extension for that type, without the dot (``png``, ``mp4``).
    """

    source_url: str
    bytes: int
    sha256: str
    content_type: str
    extension: str


class Sink(Protocol):
    """Anything the bytes can be written to (a binary file, an fsspec file, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> Any: ...


#: Opens a fresh sink for one attempt; the context manager's exit discards it on an exception.
OpenSink = Callable[[], AbstractContextManager[Sink]]


class OutputDownloader(Closing):
    """Fetches output files into sinks, with the rules above; one per task, closed after use.

    :param max_bytes: the cap on one file (``max_output_bytes``), counted after any
        ``Content-Encoding`` is undone; a larger file fails with ``OutputTooLargeError`` --
        before any byte is written when the server announces its size.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for each piece of the body.
    :param attempts: attempts at one file, the first included; transfer failures (cut
        connection, truncated body, 429, 5xx) are retried with backoff, each attempt in a new sink.
    :param max_seconds: the whole download of one file, retries included, ends within this
        many seconds (and one read timeout): a host that trickles bytes cannot hold a worker.
    :param api_base_url: the RunComfy API's base URL; decides the URL policy (``_urlpolicy``).
        None: RunComfy's own, the strict rules.
    :param transport: an ``httpx`` transport, for tests of what the emulator cannot do
        (connections then go where the transport sends them: no address pinning).
    :param resolver: resolves host names for the policy (tests of hosts that do not exist).
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        attempts: int = DOWNLOAD_ATTEMPTS,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        api_base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.max_bytes = check_max_output_bytes(max_bytes)
        self.max_seconds = float(max_seconds)
        # Only the number of attempts and ``max_seconds`` bound the retries, not the API's total.
        self.retry = RetryPolicy(max_attempts=max(1, attempts), max_total=self.max_seconds)
        # Many outputs on RunComfy's one output host: each host looked up once a minute, not once
        # per file (the connection stays pinned to the checked addresses). A failed lookup is not
        # kept: the download's retries look again.
        self.policy = UrlPolicy(api_base_url, CachingResolver(resolver or resolve, failure_ttl=0))
        # No httpx.Client: no auth, cookies or base URL shared with anything, redirects followed
        # under the policy, and no INFO log line carrying a pre-signed URL's signature.
        self._opener = Opener(
            self.policy, httpx.Timeout(read_timeout, connect=connect_timeout), _HEADERS, transport
        )

    def close(self) -> None:
        """Close the connections."""
        self._opener.close()

    def download(self, url: str, open_sink: OpenSink) -> Download:
        """Stream ``url`` into a sink from ``open_sink``; retried on transfer failures.

        ``open_sink`` is called once per attempt, after the answer's headers passed the
        checks; when the attempt fails, the exception goes through the sink's context
        manager (which should discard what was written) before the next attempt.
        """
        checked(self.policy, url, None, "the output")
        deadline = time.monotonic() + self.max_seconds
        retrying = Retrying(
            **self.retry.tenacity_kwargs(idempotent=True, what=f"download of {shown_url(url)}")
        )
        return retrying(self._attempt, url, open_sink, deadline)

    def fetch(self, url: str, *, method: str = "GET", what: str = "the file") -> Fetched:
        """One policy-checked request (redirects followed under the policy), its body read within the cap.

        Any HTTP status is returned, not raised: the caller decides what a 404 means.
        """
        deadline = time.monotonic() + self.max_seconds
        try:
            with self._opener.open(url, method, what, self._deadline(url, deadline)) as (final_url, response):
                parts = list(self._body(url, response, deadline))
                return Fetched(url, final_url, response.status_code, response.headers, b"".join(parts))
        except httpx.TransportError as error:
            raise broke_off(url, error) from None

    # -- one attempt -----------------------------------------------------------------------------

    def _attempt(self, url: str, open_sink: OpenSink, deadline: float) -> Download:
        try:
            with self._opener.open(url, "GET", "the output", self._deadline(url, deadline)) as (_, response):
                answer = Answer.check(url, response.status_code, response.headers, self.max_bytes)
                with open_sink() as sink:
                    pieces = self._body(url, response, deadline)
                    if answer.announced is not None and answer.announced >= WRITE_BEHIND_BYTES:
                        size, digest = _write_behind(pieces, sink)
                    else:
                        size, digest = _write(pieces, sink)
                    answer.check_whole(size)
        except httpx.TransportError as error:
            # Includes a body cut short: h11 notices the missing bytes of Content-Length.
            raise broke_off(url, error) from None
        return answer.download(size, digest)

    def _body(self, url: str, response: httpx.Response, deadline: float) -> Iterator[bytes]:
        """The body's bytes, inflated a bounded piece at a time, counted against the cap and the deadline."""
        # A response built in memory (a test's MockTransport) was read when it was made; its
        # stream still holds the raw bytes. Otherwise the pieces come as the connection reads
        # them (64 KiB): re-cutting them to a fixed size would copy every byte twice more.
        chunks = response.stream if response.is_stream_consumed else response.iter_raw()
        body = Body(url, response.headers, self.max_bytes, deadline, self.max_seconds)
        for chunk in chunks:  # type: ignore[union-attr]
            yield from body.feed(chunk)
        yield from body.finish()

    def _deadline(self, url: str, deadline: float) -> Callable[[], None]:
        return lambda: _check_deadline(url, deadline, self.max_seconds)


@dataclass(frozen=True)
class Fetched:
    """The answer to ``fetch``/``head``: ``final_url`` after redirects, any status, the body (capped)."""

    url: str
    final_url: str
    status_code: int
    headers: httpx.Headers
    content: bytes


def fetch(
    url: str,
    *,
    api_base_url: str | None,
    max_bytes: int = DEFAULT_FETCH_BYTES,
    timeout: float = 30.0,
    method: str = "GET",
    what: str = "the file",
    transport: httpx.BaseTransport | None = None,
    resolver: Resolver | None = None,
) -> Fetched:
    """Fetch ``url`` once under the URL policy: body capped at ``max_bytes``, all within ``timeout`` s.

    For checks the provider makes itself (e.g. that an input URL answers before paying for a
    job). Raises ``OutputURLRejectedError`` (policy), ``OutputTooLargeError``,
    ``OutputTransferError`` (network, DNS, ``timeout``) or ``OutputDownloadError``; an HTTP
    error status is returned in ``status_code``, not raised.
    """
    with OutputDownloader(
        max_bytes=max(1, max_bytes),
        connect_timeout=min(timeout, 10.0),
        read_timeout=timeout,
        attempts=1,
        max_seconds=timeout,
        api_base_url=api_base_url,
        transport=transport,
        resolver=resolver,
    ) as http:
        return http.fetch(url, method=method, what=what)


def head(url: str, *, api_base_url: str | None, timeout: float = 10.0, **kwargs: Any) -> Fetched:
    """``fetch`` with ``HEAD``: the status and headers of ``url`` (``Content-Type``, ``Content-Length``)."""
    return fetch(url, api_base_url=api_base_url, timeout=timeout, method="HEAD", max_bytes=1, **kwargs)


def _write(pieces: Iterator[bytes], sink: Sink) -> tuple[int, Any]:
    """Hash and write each piece as it arrives: ``(bytes written, their sha256)``."""
    digest = hashlib.sha256()
    size = 0
    for piece in pieces:
        size += len(piece)
        digest.update(piece)
        sink.write(piece)
    return size, digest


def _write_behind(pieces: Iterator[bytes], sink: Sink) -> tuple[int, Any]:
    """``_write``, with the hashing and writing on a second thread while this one receives.

    Receiving (the socket, the HTTP parser) and hashing and writing (``hashlib`` and file
    writes let go of the GIL for large buffers) then overlap, so a big file arrives in about
    the time the slower side takes rather than their sum. Pieces are handed over about
    ``CHUNK_SIZE`` at a time, at most ``WRITE_BEHIND_BATCHES`` waiting: memory stays a few MB
    whatever the file's size. A failure on either side ends both; the caller's sink then sees
    the exception (and discards what was written).
    """
    digest = hashlib.sha256()
    handoff: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=WRITE_BEHIND_BATCHES)
    failures: list[BaseException] = []

    def drain() -> None:
        try:
            while (batch := handoff.get()) is not None:
                for piece in batch:
                    digest.update(piece)
                    sink.write(piece)
        except BaseException as error:  # reported to the receiving side, which raises it
            failures.append(error)
            while handoff.get() is not None:  # the receiving side must never block on a full queue
                pass

    writer = threading.Thread(target=drain, name="runcomfy-write-behind", daemon=True)
    writer.start()
    size = 0
    batch: list[bytes] = []
    batched = 0
    try:
        for piece in pieces:
            if failures:
                break
            size += len(piece)
            batch.append(piece)
            batched += len(piece)
            if batched >= CHUNK_SIZE:
                handoff.put(batch)
                batch, batched = [], 0
        if batch and not failures:
            handoff.put(batch)
    finally:
        handoff.put(None)
        writer.join()
    if failures:
        raise failures[0]
    return size, digest


def _check_deadline(url: str, deadline: float, max_seconds: float) -> None:
    if time.monotonic() > deadline:
        raise OutputTimeoutError(
            f"The download of {shown_url(url)} did not finish within {max_seconds:g} seconds; it was "
            "not kept. The host may be very slow, or sending the file a trickle at a time."
        )


def broke_off(url: str, error: Exception) -> OutputTransferError:
    """A connection that failed or broke off (httpx's or aiohttp's error), as the user's error."""
    return OutputTransferError(
        f"The download of {shown_url(url)} broke off ({type(error).__name__}: {truncate(error, 200)})."
    )


def too_large(url: str, max_bytes: int, what: str) -> OutputTooLargeError:
    return OutputTooLargeError(
        f"The output {shown_url(url)} is larger than max_output_bytes={max_bytes} ({what}); "
        "it was not kept. Raise max_output_bytes on the task if outputs this large are expected."
    )


@dataclass(frozen=True)
class Answer:
    """An output host's answer, judged by its status and headers before any byte of it is kept.

    Shared by the threads' downloads (``OutputDownloader``) and the batch's event loop
    (``_aiodownload``): whatever reads the bytes, an answer is judged the same way.
    """

    url: str
    content_type: str
    extension: str
    announced: int | None  # Content-Length, when it counts the bytes that arrive
    identity: bool

    @classmethod
    def check(cls, url: str, status: int, headers: Mapping[str, str], max_bytes: int) -> Answer:
        """The answer as kept, or the user's error: a status that is not 200, a type that is not a
        picture or video, a size announced over the cap."""
        _check_status(url, status, headers)
        content_type, extension = media_type(url, headers.get("content-type"))
        announced = _content_length(headers)
        if announced is not None and announced > max_bytes:
            raise too_large(url, max_bytes, f"the server announced {announced} bytes")
        return cls(url, content_type, extension, announced, _identity(headers))

    def check_whole(self, size: int) -> None:
        """``OutputTransferError`` when fewer (or more) bytes arrived than Content-Length said."""
        if self.announced is not None and self.identity and size != self.announced:
            raise OutputTransferError(
                f"The download of {shown_url(self.url)} ended after {size} of {self.announced} bytes."
            )

    def download(self, size: int, digest: Any) -> Download:
        return Download(
            source_url=self.url,
            bytes=size,
            sha256=digest.hexdigest(),
            content_type=self.content_type,
            extension=self.extension,
        )


class Body:
    """A body's bytes as they arrive: inflated a bounded piece at a time (after any
    ``Content-Encoding``), counted against the cap, and within the download's deadline."""

    def __init__(
        self, url: str, headers: Mapping[str, str], max_bytes: int, deadline: float, max_seconds: float
    ) -> None:
        self.url, self.max_bytes, self.deadline, self.max_seconds = url, max_bytes, deadline, max_seconds
        # The common case (pictures are not compressed again): counted here, no decoder.
        self._decoder = (
            None if _identity(headers) else BoundedDecoder(headers.get("content-encoding"), max_bytes)
        )
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """What ``chunk`` (as received) gives, a bounded piece at a time."""
        _check_deadline(self.url, self.deadline, self.max_seconds)
        if self._decoder is None:
            self._size += len(chunk)
            if self._size > self.max_bytes:
                raise too_large(self.url, self.max_bytes, f"more than {self.max_bytes} bytes arrived")
            yield chunk
            return
        yield from self._decoded(self._decoder.feed(chunk))

    def finish(self) -> Iterator[bytes]:
        """What the decoder still held once the last chunk arrived."""
        if self._decoder is not None:
            yield from self._decoded(self._decoder.finish())

    def _decoded(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from pieces
        except BodyTooLargeError:
            raise too_large(self.url, self.max_bytes, f"more than {self.max_bytes} bytes arrived") from None
        except BodyEncodingError as error:
            raise OutputDownloadError(
                f"The answer for {shown_url(self.url)} could not be decoded ({error}); it was not kept."
            ) from None


def _check_status(url: str, status: int, headers: Mapping[str, str]) -> None:
    if status == 200:
        return
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429 or status >= 500:
        raise OutputTransferError(
            f"The output host answered HTTP {status} for {shown_url(url)}.",
            status_code=status,
            retry_after=retry_after,
        )
    if status in (403, 404, 410):
        raise OutputUnavailableError(
            f"The output {shown_url(url)} answered HTTP {status}: RunComfy's output URLs are temporary "
            "and this one has most likely expired. Run the job again to get new outputs, and keep "
            "copies sooner (output_dir).",
            status_code=status,
        )
    raise OutputDownloadError(
        f"The output {shown_url(url)} answered HTTP {status}; it was not kept.", status_code=status
    )


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.strip().isdigit() else None


def _identity(headers: Mapping[str, str]) -> bool:
    """Whether the body arrives as sent (no Content-Encoding), so Content-Length counts its bytes."""
    return headers.get("content-encoding", "identity").strip().lower() in ("", "identity")
