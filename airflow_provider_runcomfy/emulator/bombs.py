"""Compression bombs on demand: small bodies that inflate to gigabytes, cheap to make and to serve.

A deflate stream of zeros is built from one compressed megabyte repeated:
a full flush ends each block on a byte boundary and resets the
dictionary, so the compressed form of every 1 MiB of zeros is the same
~1 KB and copies of it concatenate into a valid stream. A 1 GiB bomb is
therefore made in milliseconds (plus a CRC pass) instead of the seconds
that compressing a gigabyte takes, and cached, so a test that fetches it
many times pays once.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterator

from airflow_provider_runcomfy.emulator.images import PNG_SIGNATURE, png_chunk

_MIB = 1 << 20
_ZEROS = bytes(_MIB)
#: The side of the picture a PNG bomb's header declares.
PNG_BOMB_SIDE = 64
#: Bodies are sent in pieces of this size.
SEND_CHUNK = 64 * 1024


@functools.lru_cache(maxsize=1)
def _zero_block() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(_ZEROS) + compressor.flush(zlib.Z_FULL_FLUSH)


def _raw_deflate_of_zeros(size: int) -> bytes:
    """A raw deflate stream (no header) that inflates to ``size`` zero bytes."""
    whole, rest = divmod(size, _MIB)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return _zero_block() * whole + tail.compress(_ZEROS[:rest]) + tail.flush(zlib.Z_FINISH)


def _crc32_of_zeros(size: int) -> int:
    crc = 0
    for offset in range(0, size, _MIB):
        crc = zlib.crc32(_ZEROS[: min(_MIB, size - offset)], crc)
    return crc


def _gzip_of_zeros(size: int) -> bytes:
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no mtime, OS unknown
    trailer = struct.pack("<II", _crc32_of_zeros(size), size & 0xFFFFFFFF)
    return header + _raw_deflate_of_zeros(size) + trailer


def _zlib_of_zeros(size: int) -> bytes:
    adler = ((size % 65521) << 16) | 1  # Adler-32 of zeros: A stays 1, B adds 1 per byte
    return b"\x78\xda" + _raw_deflate_of_zeros(size) + struct.pack(">I", adler)


@functools.lru_cache(maxsize=4)
def gzip_bomb(size: int) -> bytes:
    """A body for ``Content-Encoding: gzip, gzip``: gzip of gzip of ``size`` zero bytes (a few KB)."""
    inner = _gzip_of_zeros(size)
    outer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    return outer.compress(inner) + outer.flush()


@functools.lru_cache(maxsize=4)
def zlib_bomb(size: int) -> bytes:
    """A body for ``Content-Encoding: deflate`` (zlib framing, as HTTP means it): ~size/1000 bytes."""
    return _zlib_of_zeros(size)


@functools.lru_cache(maxsize=4)
def png_bomb(size: int) -> bytes:
    """A PNG whose header says 64x64 RGB and whose IDAT data inflates to ``size`` bytes.

    The first 64 rows of the inflated data are a valid black picture
    (filter byte 0, then zeros); everything after is excess a careful
    decoder stops at and a careless one inflates whole.
    """
    ihdr = struct.pack(">IIBBBBB", PNG_BOMB_SIDE, PNG_BOMB_SIDE, 8, 2, 0, 0, 0)
    data = _zlib_of_zeros(max(size, PNG_BOMB_SIDE * (1 + 3 * PNG_BOMB_SIDE)))
    idats = b"".join(png_chunk(b"IDAT", data[i : i + _MIB]) for i in range(0, len(data), _MIB))
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + idats + png_chunk(b"IEND", b"")


def pieces(body: bytes) -> Iterator[bytes]:
    """``body`` in ``SEND_CHUNK`` pieces, copied one piece at a time as they are sent."""
    view = memoryview(body)
    for offset in range(0, len(body), SEND_CHUNK):
        yield bytes(view[offset : offset + SEND_CHUNK])
