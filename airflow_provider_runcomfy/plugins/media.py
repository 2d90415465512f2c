"""Pictures streamed through the API server: capped, timed, policy-checked, never buffered whole.

A picture of the outputs view comes from one of three places, all looked up
from the task instance (``records``), never from the browser's request:

- a **kept copy** in ``output_dir`` (any ``ObjectStoragePath``), read in chunks
  in a worker thread;
- a **URL** (a RunComfy output, or an input picture), fetched by the client's own
  ``Opener`` (the URL policy on the URL and on every redirect, connections pinned to
  checked addresses, no credentials), image or video only, with the view's timeouts, a
  cap on bytes and a bound on fetches at once;
- a small ``data:`` URI kept in the rendered fields.

What is served is marked so that a browser never runs it: ``nosniff``, a
sandboxing Content-Security-Policy, and SVG (which can carry script) refused.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import httpx

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.client._urlpolicy import Opener, UrlPolicy
from airflow_provider_runcomfy.client.closing import close_all
from airflow_provider_runcomfy.client.download import CHUNK_SIZE, OutputDownloadError, media_type, shown_url
from airflow_provider_runcomfy.client.errors import OutputURLRejectedError
from airflow_provider_runcomfy.outputs.files import storage_path

#: The largest picture the view streams; a bigger one is linked to, not shown.
MAX_VIEW_BYTES = 50_000_000
#: Seconds to connect to, and then to wait for each piece from, a picture's host.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
#: Seconds one proxied picture may take in all.
TOTAL_TIMEOUT = 60.0
#: Remote fetches at once per API server process; more wait (up to ``QUEUE_TIMEOUT``) for a turn.
MAX_CONCURRENT_FETCHES = 4
QUEUE_TIMEOUT = 20.0
#: How long the browser may reuse a picture without asking again (kept copies never change).
CACHE_SECONDS = 3600

#: Served with every picture: never sniffed into HTML, never allowed to run anything.
SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": f"private, max-age={CACHE_SECONDS}",
    "Content-Disposition": "inline",
}


class PictureUnavailable(Exception):
    """The picture cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Picture:
    """An open picture: its media type, size if known, tag if known, and its bytes as they arrive."""

    content_type: str
    length: int | None
    etag: str | None
    chunks: Iterator[bytes] | AsyncIterator[bytes]


def checked_type(declared: str, where: str) -> str:
    """``declared`` if it is an image or video type that cannot carry script, else ``PictureUnavailable``."""
    kind = declared.split(";")[0].strip().lower()
    if not kind.startswith(("image/", "video/")) or "svg" in kind:
        raise PictureUnavailable(f"{where} is not a picture this view shows ({kind or 'no type'}).", 415)
    return kind


# -- kept copies ---------------------------------------------------------------------------------


def open_stored(uri: str, *, sha256: str | None, max_bytes: int = MAX_VIEW_BYTES) -> Picture:
    """A kept copy, read in chunks (the caller iterates in a worker thread: fsspec blocks)."""
    try:
        path = storage_path(uri, argument="the kept copy", access="read", fsspec_fallback=False)
        fs, target = path.fs, path.path
        size = int(fs.size(target))
    except Exception as error:  # any filesystem's "not there" / "not allowed"
        raise PictureUnavailable(
            f"The kept copy {shown_url(uri)} cannot be read from the API server ({type(error).__name__}).",
            404,
        ) from None
    if size > max_bytes:
        raise PictureUnavailable(f"The kept copy is {size} bytes, more than this view shows.", 413)
    guessed, _ = mimetypes.guess_type(target)
    content_type = checked_type(guessed or "", "The kept copy")
    with fs.open(target, "rb") as file:
        head = file.read(16)
    if not looks_like_media(head):
        raise PictureUnavailable("The kept copy does not start like a picture or a video.", 415)

    def chunks() -> Iterator[bytes]:
        sent = 0
        with fs.open(target, "rb") as file:
            while sent < size and (chunk := file.read(min(CHUNK_SIZE, size - sent))):
                sent += len(chunk)
                yield chunk

    return Picture(content_type, size, f'"{sha256}"' if sha256 else None, chunks())


#: How the picture and video formats the view serves begin (``None``: any byte).
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),
    (0, b"GIF8"),
    (0, b"RIFF"),  # WebP (RIFF....WEBP)
    (4, b"ftyp"),  # MP4, MOV, AVIF
    (0, b"\x1aE\xdf\xa3"),  # WebM / Matroska
    (0, b"II*\x00"),
    (0, b"MM\x00*"),  # TIFF
)


def looks_like_media(head: bytes) -> bool:
    """Whether a file's first bytes are those of a picture or video format the view serves.

    Paths of kept copies and storage inputs come from XCom and rendered fields, which
    some users can edit: this keeps the API server from serving any other file.
    """
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES)


# -- data: URIs ----------------------------------------------------------------------------------


def open_data_uri(uri: str) -> Picture:
    """A ``data:`` picture (only small ones reach the rendered fields whole)."""
    header, _, data = uri.partition(",")
    content_type = checked_type(header.removeprefix("data:").split(";")[0], "The inline picture")
    try:
        body = base64.b64decode(data, validate=True) if header.endswith(";base64") else data.encode()
    except (binascii.Error, ValueError):
        raise PictureUnavailable(
            "The inline picture is not valid base64 (it may have been truncated).", 422
        ) from None
    return Picture(content_type, len(body), None, iter([body]))


# -- URLs ----------------------------------------------------------------------------------------


class Fetcher:
    """Streams pictures from URLs for one API server process, through the client's ``Opener``.

    The provider has one implementation of "fetch a URL someone else named": the client's
    ``Opener`` (``client._urlpolicy``) -- every URL and every redirect checked (https only,
    no credentials, public addresses only; plain http to loopback only while ``api_base_url``,
    the RunComfy connection's host, is the emulator on loopback), the connection pinned to
    the checked address, proxies as the environment names them, the same redirect limit.
    The view drives it from the API server's worker threads (the routes that use it are
    plain functions), with a bound on fetches at once so a gallery page cannot make the
    API server open a hundred connections.

    :param transport: a caller's transport (tests of faults nothing real produces).
    """

    def __init__(self, *, transport: httpx.BaseTransport | None = None) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_FETCHES)
        self._transport = transport
        self._openers: dict[str | None, Opener] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        close_all(self._lock, self._openers)

    def _opener(self, api_base_url: str | None) -> Opener:
        with self._lock:
            opener = self._openers.get(api_base_url)
            if opener is None:
                opener = Opener(
                    UrlPolicy(api_base_url),
                    httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                    {
                        "User-Agent": f"airflow-provider-runcomfy/{__version__} (outputs view)",
                        # Decoding is where a small body becomes gigabytes; pictures are compressed already.
                        "Accept-Encoding": "identity",
                    },
                    transport=self._transport,
                )
                self._openers[api_base_url] = opener
        return opener

    def open(self, url: str, *, api_base_url: str | None, max_bytes: int = MAX_VIEW_BYTES) -> Picture:
        """Start fetching ``url`` (blocks: call from a worker thread).

        The returned chunks hold a fetch slot and the connection until they are exhausted
        or closed. Every way the URL can fail -- refused by the policy, malformed, a host
        that does not resolve, a transport error, too many redirects -- is a
        ``PictureUnavailable`` with a reason, which the caller logs.
        """
        if not self._slots.acquire(timeout=QUEUE_TIMEOUT):
            raise PictureUnavailable("Too many pictures are being fetched; reload in a moment.", 503)
        deadline = time.monotonic() + TOTAL_TIMEOUT

        def check_time() -> None:
            if time.monotonic() > deadline:
                raise PictureUnavailable(f"{_shown(url)} took more than {TOTAL_TIMEOUT:.0f} s.", 504)

        opened: AbstractContextManager[tuple[str, httpx.Response]] | None = None
        try:
            opened = self._opener(api_base_url).open(url, "GET", "the picture", check_time)
            try:
                _, response = opened.__enter__()
            except BaseException:
                opened = None  # a generator context that raised on entry is already closed
                raise
            return self._accept(url, response, opened, max_bytes, deadline)
        except PictureUnavailable:
            self._finish(opened)
            raise
        except OutputURLRejectedError as refused:
            self._finish(opened)
            raise PictureUnavailable(refused.message, 403) from None
        except OutputDownloadError as failed:  # unresolvable host, too many redirects
            self._finish(opened)
            raise PictureUnavailable(failed.message, 502) from None
        except httpx.TransportError as error:
            self._finish(opened)
            raise PictureUnavailable(
                f"{_shown(url)} could not be fetched ({type(error).__name__})."
            ) from None
        except (ValueError, httpx.InvalidURL) as error:  # a URL no parser accepts
            self._finish(opened)
            raise PictureUnavailable(
                f"{_shown(url)} is not a valid URL ({type(error).__name__}).", 422
            ) from None
        except BaseException:
            self._finish(opened)
            raise

    def read(
        self, url: str, *, api_base_url: str | None, max_bytes: int = MAX_VIEW_BYTES
    ) -> tuple[str, bytes]:
        """``(media type, bytes)`` of the picture at ``url``, whole (for a thumbnail), within ``max_bytes``."""
        picture = self.open(url, api_base_url=api_base_url, max_bytes=max_bytes)
        body = bytearray()
        for chunk in picture.chunks:  # type: ignore[union-attr]
            body += chunk
        if getattr(picture.chunks, "cut", False):
            raise PictureUnavailable(f"{_shown(url)} is more than {max_bytes} bytes, or too slow.", 413)
        return picture.content_type, bytes(body)

    def _finish(self, opened: AbstractContextManager[Any] | None) -> None:
        try:
            if opened is not None:
                opened.__exit__(None, None, None)
        finally:
            self._slots.release()

    def _accept(
        self,
        url: str,
        response: httpx.Response,
        opened: AbstractContextManager[Any],
        max_bytes: int,
        deadline: float,
    ) -> Picture:
        if response.status_code != 200:
            gone = response.status_code in (403, 404, 410)
            raise PictureUnavailable(
                f"{_shown(url)} answered HTTP {response.status_code}"
                + ("; RunComfy's URLs are temporary, keep copies with output_dir." if gone else "."),
                404 if gone else 502,
            )
        try:
            declared, _ = media_type(url, response.headers.get("content-type"))
        except OutputDownloadError as error:
            raise PictureUnavailable(error.message, 415) from None
        content_type = checked_type(declared, _shown(url))
        if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise PictureUnavailable(f"{_shown(url)} answered with a compressed body; not shown.", 502)
        length = response.headers.get("content-length", "")
        announced = int(length) if length.strip().isdigit() else None
        if announced is not None and announced > max_bytes:
            raise PictureUnavailable(f"{_shown(url)} is {announced} bytes, more than this view shows.", 413)
        return Picture(content_type, announced, None, self._chunks(response, opened, max_bytes, deadline))

    def _chunks(
        self, response: httpx.Response, opened: AbstractContextManager[Any], max_bytes: int, deadline: float
    ) -> Iterator[bytes]:
        return _Body(response, lambda: self._finish(opened), max_bytes, deadline)


class _Body:
    """A fetched picture's bytes; gives the connection and the fetch slot back once, however it ends.

    Not a generator: one that is never started (the browser went away before the first
    chunk) never runs its ``finally``, and the slot would be lost for the process's life.
    """

    def __init__(self, response: httpx.Response, finish: Any, max_bytes: int, deadline: float) -> None:
        self._raw = response.iter_raw(CHUNK_SIZE)
        self._finish: Any = finish
        self._left = max_bytes
        self._deadline = deadline
        #: Whether the body was cut off (too large, or too slow).
        self.cut = False

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        if self._finish is None:
            raise StopIteration
        try:
            chunk = next(self._raw)
        except (StopIteration, httpx.TransportError):
            self.close()
            raise StopIteration from None
        self._left -= len(chunk)
        # Headers are gone already: a picture that grows past the cap or the time limit
        # is cut off, and the browser shows it as broken.
        if self._left < 0 or time.monotonic() > self._deadline:
            self.cut = True
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()

    def __del__(self) -> None:
        self.close()


def _shown(url: str) -> str:
    """``shown_url`` that survives a URL no parser accepts (it is shown cut, without its query)."""
    try:
        return shown_url(url)
    except ValueError:
        return url.split("?", 1)[0][:80]


def picture_kind(source: str) -> str:
    """``data``, ``url`` or ``stored`` (a storage URI or path) for an input or output location."""
    if source.startswith("data:"):
        return "data"
    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    return "url" if scheme in ("http", "https") else "stored"
