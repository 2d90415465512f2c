"""Fetching output files from RunComfy's CDN: streamed, capped, checked, hashed, never authenticated.

RunComfy's output URLs are public and temporary, so a pipeline copies the
files it wants to keep. The copy is fetched here with a plain ``httpx``
client of its own -- never the API client -- so the API token cannot reach
an output host, whatever the URL says (a URL carrying ``user:password@`` is
refused too, since httpx would turn it into an ``Authorization`` header).

A download is streamed: the bytes go to a writable "sink" the caller opens
(a local temp file, an object-store upload), chunk by chunk, while their
size is counted against a cap and their sha256 computed. The sink is opened
only once the response's headers passed every check, so a refused download
leaves nothing behind. Where the bytes land, and under which name, is the
caller's business (``airflow_provider_runcomfy.outputs.storage`` in Airflow).

This module knows nothing of Airflow.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx
from tenacity import Retrying

from airflow_provider_runcomfy import __version__
from airflow_provider_runcomfy.client._validation import is_loopback_host
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.client.retry import RetryPolicy, parse_retry_after

#: The default cap on one output file: well above a 4K image or a short video clip, far
#: below what would fill a worker's disk by accident.
DEFAULT_MAX_OUTPUT_BYTES = 200_000_000

#: Attempts at one output file (the first included) before the task gives up on it.
DOWNLOAD_ATTEMPTS = 3

#: How much is read and written at a time: memory stays flat whatever the file's size.
CHUNK_SIZE = 1024 * 1024

_MAX_REDIRECTS = 5
_USER_AGENT = f"airflow-provider-runcomfy/{__version__} (output download)"

#: Media types the provider names the copy after; others fall back to ``mimetypes``.
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/avif": "avif",
    "image/tiff": "tiff",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}

#: Media types that say nothing about the content: tolerated when the URL's extension does.
_UNTYPED = ("", "application/octet-stream", "binary/octet-stream")


class OutputDownloadError(RunComfyError):
    """An output file could not be copied. Not retryable unless a subclass says so."""


class OutputURLRejectedError(OutputDownloadError):
    """The output URL (or a redirect) is not ``https://`` (``http://`` only on loopback) or carries credentials."""


class OutputTooLargeError(OutputDownloadError):
    """The output file is larger than ``max_output_bytes``."""


class OutputContentTypeError(OutputDownloadError):
    """The output URL answered with something that is not an image or a video (e.g. an HTML error page)."""


class OutputUnavailableError(OutputDownloadError):
    """The output URL answered 403, 404 or 410: it has most likely expired."""


class OutputTransferError(OutputDownloadError):
    """The transfer broke off (connection cut, timeout, truncated body, 429 or 5xx): worth another try."""

    retryable = True


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


def check_max_output_bytes(value: object) -> int:
    """Return ``value`` if it is a usable ``max_output_bytes`` (a positive int), else raise ``ValueError``.

    Operators check it when the DAG is parsed, so a typo is an import error, not a lost output.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"max_output_bytes must be a positive number of bytes, not {value!r}.")
    return value


def check_output_url(url: str) -> str:
    """Return ``url`` if output files may be fetched from it, else raise ``OutputURLRejectedError``.

    Only ``https://`` is allowed, and ``http://`` for a loopback host (the emulator), so that
    an output is never fetched in clear text over a network; credentials in the URL are refused
    because they would be sent as an ``Authorization`` header.
    """
    parts = urlsplit(str(url))
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "only https:// URLs are fetched"
    elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
        problem = "plain http:// is fetched only from a loopback host (the emulator); outputs need https://"
    elif parts.username or parts.password:
        problem = "it carries credentials, which would be sent as an Authorization header"
    if problem:
        raise OutputURLRejectedError(f"Refusing to download the output {shown_url(url)}: {problem}.")
    return str(url)


def shown_url(url: str) -> str:
    """``url`` without its query and credentials, for messages: signed URLs are long and not for logs."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else str(url)[:200]


def media_type(url: str, content_type: str | None) -> tuple[str, str]:
    """``(media type, extension)`` of an answer, or ``OutputContentTypeError`` if it is not a picture or video.

    ``application/octet-stream`` (or no type at all), which some storage services send for
    everything, is accepted when the URL's file extension names an image or video type.
    """
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared.startswith(("image/", "video/")):
        return declared, _extension(declared) or _url_extension(url) or "bin"
    if declared in _UNTYPED:
        guessed, _ = mimetypes.guess_type(urlsplit(url).path)
        if guessed and guessed.startswith(("image/", "video/")):
            return guessed, _extension(guessed) or _url_extension(url) or "bin"
    raise OutputContentTypeError(
        f"The output {shown_url(url)} is not an image or a video (Content-Type "
        f"{declared or 'missing'!r}{' and no image or video file extension' if declared in _UNTYPED else ''}); "
        "it was not kept. If the URL has expired, the host may be answering with an error page."
    )


def _extension(media: str) -> str | None:
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    guessed = mimetypes.guess_extension(media)
    return guessed.lstrip(".") if guessed else None


def _url_extension(url: str) -> str | None:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext.isalnum() and 0 < len(ext) <= 8 else None


class OutputDownloader:
    """Fetches output files into sinks, with the rules above; one per task, closed after use.

    :param max_bytes: the cap on one file (``max_output_bytes``); a larger file fails with
        ``OutputTooLargeError`` -- before any byte is written when the server announces its size.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for each piece of the body.
    :param attempts: attempts at one file, the first included; transfer failures (cut
        connection, truncated body, 429, 5xx) are retried with backoff, each attempt in a new sink.
    :param transport: an ``httpx`` transport, for tests of what the emulator cannot do.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        attempts: int = DOWNLOAD_ATTEMPTS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.max_bytes = check_max_output_bytes(max_bytes)
        # Long files take long: the whole download may run for minutes, so only the
        # number of attempts bounds the retries, not the API calls' total time.
        self.retry = RetryPolicy(max_attempts=max(1, attempts), max_total=3600.0)
        # A client of its own: no auth, no base URL, no cookies shared with the API client.
        # Every request, redirects included, passes the URL rules first.
        self._http = httpx.Client(
            auth=None,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            headers={"User-Agent": _USER_AGENT, "Accept": "image/*, video/*, */*;q=0.1"},
            event_hooks={"request": [_check_request]},
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def download(self, url: str, open_sink: OpenSink) -> Download:
        """Stream ``url`` into a sink from ``open_sink``; retried on transfer failures.

        ``open_sink`` is called once per attempt, after the answer's headers passed the
        checks; when the attempt fails, the exception goes through the sink's context
        manager (which should discard what was written) before the next attempt.
        """
        check_output_url(url)
        retrying = Retrying(
            **self.retry.tenacity_kwargs(idempotent=True, what=f"download of {shown_url(url)}")
        )
        return retrying(self._attempt, url, open_sink)

    def _attempt(self, url: str, open_sink: OpenSink) -> Download:
        try:
            with self._http.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                _check_status(url, response)
                content_type, extension = media_type(url, response.headers.get("content-type"))
                announced = _content_length(response)
                if announced is not None and announced > self.max_bytes:
                    raise self._too_large(url, f"the server announced {announced} bytes")
                digest = hashlib.sha256()
                size = 0
                with open_sink() as sink:
                    for chunk in response.iter_bytes(CHUNK_SIZE):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise self._too_large(url, f"more than {self.max_bytes} bytes arrived")
                        digest.update(chunk)
                        sink.write(chunk)
                    if announced is not None and _identity(response) and size != announced:
                        raise OutputTransferError(
                            f"The download of {shown_url(url)} ended after {size} of {announced} bytes."
                        )
        except httpx.TooManyRedirects:
            raise OutputDownloadError(
                f"The output {shown_url(url)} redirected more than {_MAX_REDIRECTS} times; it was not kept."
            ) from None
        except httpx.TransportError as error:
            # Includes a body cut short: h11 notices the missing bytes of Content-Length.
            raise OutputTransferError(
                f"The download of {shown_url(url)} broke off ({type(error).__name__}: {error})."
            ) from None
        return Download(
            source_url=url,
            bytes=size,
            sha256=digest.hexdigest(),
            content_type=content_type,
            extension=extension,
        )

    def _too_large(self, url: str, what: str) -> OutputTooLargeError:
        return OutputTooLargeError(
            f"The output {shown_url(url)} is larger than max_output_bytes={self.max_bytes} ({what}); "
            "it was not kept. Raise max_output_bytes on the task if outputs this large are expected."
        )


def _check_request(request: httpx.Request) -> None:
    """Event hook on every request the download client sends, redirects included."""
    check_output_url(str(request.url))
    # Belt and braces: nothing in this client sets one, and nothing may.
    request.headers.pop("Authorization", None)


def _check_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
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


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.strip().isdigit() else None


def _identity(response: httpx.Response) -> bool:
    """Whether the body arrives as sent (no Content-Encoding), so Content-Length counts its bytes."""
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")
