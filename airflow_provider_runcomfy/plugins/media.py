"""Pictures streamed through the API server: capped, timed, policy-checked, never buffered whole.

A picture of the outputs view comes from one of three places, all looked up
from the task instance (``records``), never from the browser's request:

- a **kept copy** in ``output_dir`` (any ``ObjectStoragePath``), read in chunks
  in a worker thread;
- a **URL** (a RunComfy output, or an input picture), fetched with the same
  rules as an output download (the URL policy on the URL and on every redirect,
  connections pinned to checked addresses, no credentials, image or video only) by an asyncio
  client with its own timeouts, a cap on bytes and a bound on fetches at once,
  so a gallery page cannot make the API server open a hundred connections;
- a small ``data:`` URI kept in the rendered fields.

What is served is marked so that a browser never runs it: ``nosniff``, a
sandboxing Content-Security-Policy, and SVG (which can carry script) refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.client._urlpolicy import HostUnresolvable, UrlPolicy, URLRefused
from airflow_provider_runcomfy.client.download import CHUNK_SIZE, OutputDownloadError, media_type, shown_url

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

_MAX_REDIRECTS = 3


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
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(uri)
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
    """Streams pictures from URLs for one API server process: one connection pool, bounded fetches.

    Every URL and every redirect passes the provider's URL policy (``client._urlpolicy``):
    https only, no credentials, public addresses only, and the connection goes to the
    address that was checked (no DNS rebinding). Plain http to loopback is allowed only
    when ``api_base_url`` (the RunComfy connection's host) is on loopback: the emulator.

    Built on first use inside the API server's event loop and kept for the process.
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self._http = httpx.AsyncClient(
            auth=None,
            follow_redirects=False,  # each hop is checked here
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            headers={"User-Agent": f"airflow-provider-runcomfy/{__version__} (outputs view)"},
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def open(self, url: str, *, api_base_url: str | None, max_bytes: int = MAX_VIEW_BYTES) -> Picture:
        """Start fetching ``url``; the returned chunks hold a fetch slot until they are exhausted or closed."""
        try:
            await asyncio.wait_for(self._slots.acquire(), QUEUE_TIMEOUT)
        except TimeoutError:
            raise PictureUnavailable(
                "Too many pictures are being fetched; reload in a moment.", 503
            ) from None
        release = True
        try:
            picture = await self._start(url, UrlPolicy(api_base_url), max_bytes)
            release = False
            return picture
        finally:
            if release:
                self._slots.release()

    async def _start(self, url: str, policy: UrlPolicy, max_bytes: int) -> Picture:
        deadline = time.monotonic() + TOTAL_TIMEOUT
        current, previous = url, None
        for _ in range(_MAX_REDIRECTS + 1):
            addresses = await _checked(policy, current, previous)
            response = await self._send(current, addresses)
            if response.status_code not in (301, 302, 303, 307, 308) or "location" not in response.headers:
                break
            await response.aclose()
            previous, current = current, urljoin(current, response.headers["location"])
        else:
            raise PictureUnavailable(f"{shown_url(url)} redirected more than {_MAX_REDIRECTS} times.")
        try:
            return self._accept(url, response, max_bytes, deadline)
        except BaseException:
            await response.aclose()
            raise

    async def _send(self, url: str, addresses: list[str]) -> httpx.Response:
        request = self._http.build_request("GET", url, headers={"Accept-Encoding": "identity"})
        try:
            if not addresses:
                return await self._http.send(request, stream=True)
            last: Exception | None = None
            for address in addresses:
                pinned = httpx.Request(
                    "GET",
                    request.url.copy_with(host=address),
                    headers=request.headers,  # keeps Host: the URL's own host
                    extensions={"sni_hostname": request.url.host},
                )
                try:
                    return await self._http.send(pinned, stream=True)
                except httpx.ConnectError as error:
                    last = error
            raise last or httpx.ConnectError("no address")
        except httpx.TransportError as error:
            raise PictureUnavailable(
                f"{shown_url(url)} could not be fetched ({type(error).__name__})."
            ) from None

    def _accept(self, url: str, response: httpx.Response, max_bytes: int, deadline: float) -> Picture:
        if response.status_code != 200:
            gone = response.status_code in (403, 404, 410)
            raise PictureUnavailable(
                f"{shown_url(url)} answered HTTP {response.status_code}"
                + ("; RunComfy's URLs are temporary, keep copies with output_dir." if gone else "."),
                404 if gone else 502,
            )
        try:
            declared, _ = media_type(url, response.headers.get("content-type"))
        except OutputDownloadError as error:
            raise PictureUnavailable(error.message, 415) from None
        content_type = checked_type(declared, shown_url(url))
        if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            # Decoding is where a small body becomes gigabytes; pictures are compressed already.
            raise PictureUnavailable(f"{shown_url(url)} answered with a compressed body; not shown.", 502)
        length = response.headers.get("content-length", "")
        announced = int(length) if length.strip().isdigit() else None
        if announced is not None and announced > max_bytes:
            raise PictureUnavailable(
                f"{shown_url(url)} is {announced} bytes, more than this view shows.", 413
            )
        return Picture(content_type, announced, None, self._chunks(response, max_bytes, deadline))

    async def _chunks(
        self, response: httpx.Response, max_bytes: int, deadline: float
    ) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in response.aiter_raw(CHUNK_SIZE):
                sent += len(chunk)
                # Headers are gone already: a picture that grows past the cap or the time
                # limit is cut off, and the browser shows it as broken.
                if sent > max_bytes or time.monotonic() > deadline:
                    return
                yield chunk
        except httpx.TransportError:
            return
        finally:
            await response.aclose()
            self._slots.release()


async def _checked(policy: UrlPolicy, url: str, previous: str | None) -> list[str]:
    """The addresses ``url`` may be fetched from (the resolver blocks: it runs in a thread)."""
    try:
        return await asyncio.to_thread(policy.check, url, previous)
    except URLRefused as refused:
        raise PictureUnavailable(f"Not fetching {shown_url(url)}: {refused.problem}.", 403) from None
    except HostUnresolvable:
        raise PictureUnavailable(f"The host of {shown_url(url)} could not be resolved.", 502) from None


def picture_kind(source: str) -> str:
    """``data``, ``url`` or ``stored`` (a storage URI or path) for an input or output location."""
    if source.startswith("data:"):
        return "data"
    return "url" if urlsplit(source).scheme in ("http", "https") else "stored"
