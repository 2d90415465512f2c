"""Bounds on what comes back over the network: body sizes, decoding, error texts, secrets in texts.

Nothing remote is trusted. A body is read in pieces and counted as it arrives,
never whole before the cap counts; a compressed body is inflated here, a
bounded piece at a time, so a few kilobytes that claim to be a gigabyte
(``Content-Encoding: gzip, gzip``) cost at most the cap; a text that came from
the other side is cut before it goes into a message, an event or a log.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

from airflow_provider_runcomfy.client.redact import redact_text

#: The most bytes one piece of inflated data may have: what a decoder holds at a time.
PIECE = 64 * 1024

#: The longest text from the other side (an error message, a job's ``error``) kept in a message.
MAX_TEXT = 1000

#: Characters scanned past ``limit`` before a text is cut: a URL straddling the cut is still
#: recognised, and a redaction that shortens the text does not pull unscanned text in.
_SCAN_MARGIN = 4096

#: The encodings a body may come in: gzip and deflate are inflated with a bound, identity is as is.
#: Others (br, zstd, compress) are refused rather than handed to a decoder with no bound.
SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "identity")


class BodyTooLargeError(Exception):
    """The body (inflated, when encoded) is larger than the cap; ``limit`` is the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


class BodyEncodingError(Exception):
    """The body's ``Content-Encoding`` is not one we inflate, or its compressed data is broken."""


def truncate(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` as a string of at most about ``limit`` characters, saying how much was cut.

    Its credentials go first (``redact.redact_text``): a text cut here came from the other
    side, and a pre-signed URL quoted in it is as secret as the token. Only a bounded prefix
    is scanned, so a megabyte of error text costs what its first few kilobytes cost.
    """
    value = text if isinstance(text, str) else str(text)
    # What is kept comes from the scanned window; whatever lies past it is never shown.
    scanned = redact_text(value[: limit + _SCAN_MARGIN])
    if len(value) <= limit or (len(value) <= limit + _SCAN_MARGIN and len(scanned) <= limit):
        return scanned  # (``***`` may make a one-letter value a little longer: "about")
    return f"{scanned[:limit]}... ({len(value) - limit} more characters)"


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` in any form a library might print it.

    Raw, URL-encoded, ``repr``-escaped (how a bytes header value shows in an exception) and
    base64 (of the token and of ``Bearer <token>``, as an Authorization header may be logged).
    """
    if not secret:
        return text
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
    }
    for value in (secret, f"Bearer {secret}"):
        encoded = base64.b64encode(value.encode("utf-8", "backslashreplace")).decode()
        forms |= {encoded, encoded.rstrip("=")}
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def content_encodings(header: str | None) -> list[str]:
    """The encodings of a ``Content-Encoding`` header in the order they must be undone (last first)."""
    names = [name.strip().lower() for name in (header or "").split(",")]
    names = [name for name in names if name and name != "identity"]
    unknown = [name for name in names if name not in SUPPORTED_ENCODINGS]
    if unknown:
        raise BodyEncodingError(f"Content-Encoding {', '.join(unknown)!r} is not supported")
    if len(names) > 2:
        # No server needs more; a stack of encodings is how a bomb multiplies its ratio.
        raise BodyEncodingError(f"{len(names)} stacked content encodings")
    return list(reversed(names))


class BoundedDecoder:
    """Undoes a body's content encodings a piece at a time and yields at most ``limit`` bytes in all.

    Raises ``BodyTooLargeError`` as soon as the output passes ``limit`` (having inflated at
    most one piece more), and ``BodyEncodingError`` for broken compressed data. Memory stays
    at about one ``PIECE`` per encoding, whatever the compression ratio.
    """

    def __init__(self, content_encoding: str | None, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._stages = [_Inflater(name) for name in content_encodings(content_encoding)]

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded pieces of the next ``data`` received."""
        yield from self._count(self._through(data, 0))

    def finish(self) -> Iterator[bytes]:
        """What the decoders still hold once the body has ended; checks the stream was complete."""
        yield from self._count(self._flush(0))

    def _count(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise BodyTooLargeError(self.limit)
            yield piece

    def _through(self, data: bytes, level: int) -> Iterator[bytes]:
        if level == len(self._stages):
            if data:
                yield data
            return
        for piece in self._stages[level].inflate(data):
            yield from self._through(piece, level + 1)

    def _flush(self, level: int) -> Iterator[bytes]:
        if level == len(self._stages):
            return
        for piece in self._stages[level].flush():
            yield from self._through(piece, level + 1)
        yield from self._flush(level + 1)


class _Inflater:
    """One gzip or deflate layer, inflated ``PIECE`` bytes at a time (zlib's ``max_length``)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        # gzip: wbits 16+15; deflate: zlib-wrapped as the RFC says, raw deflate as some servers send.
        self._inflater = zlib.decompressobj(31 if encoding in ("gzip", "x-gzip") else 15)
        self._started = False

    def inflate(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._inflater.eof:
                # Data after the end of the compressed stream: a decoder that skipped it could be
                # fed an endless stream that never counts as output.
                raise BodyEncodingError(f"data after the end of the {self.encoding} stream")
            try:
                piece = self._inflater.decompress(data, PIECE)
            except zlib.error as error:
                if self.encoding == "deflate" and not self._started:
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._started = True
                    continue
                raise BodyEncodingError(f"broken {self.encoding} data ({error})") from None
            self._started = True
            data = self._inflater.unconsumed_tail or self._inflater.unused_data
            if piece:
                yield piece

    def flush(self) -> Iterator[bytes]:
        # What zlib still holds, in bounded pieces: ``flush()`` itself has no bound.
        while self._started and not self._inflater.eof:
            piece = self._inflater.decompress(self._inflater.unconsumed_tail, PIECE)
            if not piece:
                raise BodyEncodingError(f"the {self.encoding} stream ended early")
            yield piece
