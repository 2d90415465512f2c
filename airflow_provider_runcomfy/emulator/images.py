"""PNG files in pure Python: a small RGB raster, decoding an input to fit a ratio, and padding.

A ``Raster`` is an RGB8 ``bytearray``; its operations work a row or a
channel at a time with slice assignment and ``bytes.translate``, which run
in C, so a 512 px picture is drawn, edited and encoded in tens of
milliseconds with no compiled dependency beyond zlib. pypng reads and
writes the files.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import zlib
from collections.abc import Iterator
from operator import itemgetter

import png

Color = tuple[int, ...]  # (red, green, blue)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Inputs with more pixels than this are not decoded (pure-Python decoding of
#: a 4K photo takes seconds); the emulator draws a stand-in picture instead.
MAX_DECODE_PIXELS = 4_200_000

#: A private, ancillary, safe-to-copy chunk type (see the PNG spec's chunk
#: naming rules): decoders skip it, so a padded file is still a valid PNG.
PAD_CHUNK_TYPE = b"rcPd"
_PAD_CHUNK_DATA = 1024 * 1024
_ZEROS = bytes(64 * 1024)


class Raster:
    """An RGB picture of ``width`` x ``height`` pixels, three bytes a pixel, rows top to bottom."""

    __slots__ = ("data", "height", "width")

    def __init__(self, width: int, height: int, data: bytes | bytearray | None = None) -> None:
        self.width = width
        self.height = height
        self.data = bytearray(data if data is not None else width * height * 3)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill ``[x0, x1) x [y0, y1)``, clipped to the picture (one slice assignment a row)."""
        start, end = max(0, round(x0)), min(self.width, round(x1))
        if end <= start:
            return
        run, stride = bytes(color) * (end - start), self.width * 3
        for y in range(max(0, round(y0)), min(self.height, round(y1))):
            self.data[y * stride + start * 3 : y * stride + end * 3] = run

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color) -> None:
        """Fill the ellipse centred on ``(cx, cy)`` with radii ``rx`` and ``ry``, a row span at a time."""
        for y in range(max(0, math.floor(cy - ry)), min(self.height, math.ceil(cy + ry))):
            dy = (y + 0.5 - cy) / ry
            if abs(dy) < 1:
                half = rx * math.sqrt(1 - dy * dy)
                self.rect(cx - half, y, cx + half, y + 1, color)

    def tint(self, color: Color, strength: float) -> None:
        """Blend every pixel towards ``color`` by ``strength`` (0..1), one channel at a time."""
        for channel, target in enumerate(color):
            table = bytes(round(v + (target - v) * strength) for v in range(256))
            self.data[channel::3] = self.data[channel::3].translate(table)

    def mirror(self) -> None:
        """Flip the picture left to right."""
        stride = self.width * 3
        for start in range(0, len(self.data), stride):
            backwards = self.data[start : start + stride][::-1]  # pixels reversed, each as B,G,R
            for channel in range(3):
                self.data[start + channel : start + stride : 3] = backwards[2 - channel :: 3]

    def encode(self) -> bytes:
        """The picture as a PNG file (8-bit RGB, fast compression: quick to write and to read)."""
        out, stride = io.BytesIO(), self.width * 3
        writer = png.Writer(self.width, self.height, greyscale=False, bitdepth=8, compression=1)
        writer.write_packed(out, (self.data[i : i + stride] for i in range(0, len(self.data), stride)))
        return out.getvalue()


def digest(*parts: object) -> bytes:
    """A stable 32-byte hash of ``parts``: the emulator's only source of variety, so output is repeatable."""
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()


def target_size(aspect: tuple[int, int] | None, long_side: int, fallback: tuple[int, int]) -> tuple[int, int]:
    """Width and height for ``aspect`` (or ``fallback``'s ratio) with the long side ``long_side``."""
    width, height = aspect or fallback
    if width >= height:
        return long_side, max(1, round(long_side * height / width))
    return max(1, round(long_side * width / height)), long_side


def crop_box(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """The centred ``(x, y, w, h)`` part of a ``width`` x ``height`` picture with ratio ``out_w:out_h``."""
    if width * out_h > height * out_w:  # source wider than target: cut the sides
        crop_w = max(1, round(height * out_w / out_h))
        return (width - crop_w) // 2, 0, crop_w, height
    crop_h = max(1, round(width * out_h / out_w))
    return 0, (height - crop_h) // 2, width, crop_h


class UnreadablePNG(ValueError):
    """The bytes are not a PNG pypng can decode within the emulator's limits."""


#: Channels per pixel of each PNG colour type (grey, RGB, palette, grey+alpha, RGBA).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def check_inflated_size(data: bytes) -> None:
    """Refuse a PNG whose image data inflates to more than its header's size implies (a PNG bomb).

    pypng inflates each IDAT chunk whole, so a 1 MB chunk of a bomb would
    cost a gigabyte before anything could look at it. This pass inflates
    the IDAT stream 64 KiB at a time, keeps nothing, and stops as soon as it
    passes the size the declared width, height, depth and colour type allow.
    """
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        raise UnreadablePNG("not a PNG (no signature and IHDR)")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in _CHANNELS or width * height > MAX_DECODE_PIXELS:
        raise UnreadablePNG(
            f"a {width}x{height} PNG of colour type {color} is beyond what the emulator decodes"
        )
    row_bytes = (width * _CHANNELS[color] * depth + 7) // 8
    # Adam7 adds at most one filter byte per row of each of its 7 passes.
    bound = height * (1 + row_bytes) + (7 * (height + 1) if interlace else 0)
    inflater = zlib.decompressobj()
    inflated, offset = 0, 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            pending: bytes = data[offset + 8 : offset + 8 + length]
            while pending:
                inflated += len(inflater.decompress(pending, 64 * 1024))
                if inflated > bound:
                    raise UnreadablePNG(
                        f"its image data inflates beyond the {bound} bytes a {width}x{height} PNG needs"
                    )
                pending = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
        offset += 12 + length


def decode_fitted(data: bytes, aspect: tuple[int, int] | None, long_side: int) -> Raster:
    """Decode a PNG, crop it centred to ``aspect`` (``None``: its own ratio) and scale it (nearest pixel).

    Rows stream from pypng (as RGBA, whatever the file's colour type and
    depth) and only those the output samples are kept, so a large input
    costs decoding time but not memory.
    """
    try:
        check_inflated_size(data)
        width, height, rows, _ = png.Reader(bytes=data).asRGBA8()
        out = Raster(*target_size(aspect, long_side, (width, height)))
        x0, y0, crop_w, crop_h = crop_box(width, height, out.width, out.height)
        columns = (4 * (x0 + x * crop_w // out.width) for x in range(out.width))
        pick = itemgetter(*(i + channel for i in columns for channel in range(3)))
        wanted: dict[int, list[int]] = {}
        for y in range(out.height):
            wanted.setdefault(y0 + y * crop_h // out.height, []).append(y)
        stride = out.width * 3
        for source_y, row in enumerate(rows):
            if source_y in wanted:
                line = bytes(pick(row))
                for y in wanted[source_y]:
                    out.data[y * stride : (y + 1) * stride] = line
            if source_y >= y0 + crop_h:
                break
        return out
    except (png.Error, ValueError, KeyError, zlib.error) as exc:
        raise UnreadablePNG(str(exc)) from exc


def padded_png(png_bytes: bytes, total_size: int | None) -> tuple[int, Iterator[bytes]]:
    """``(content length, parts)`` of ``png_bytes`` grown to about ``total_size`` bytes.

    The padding is a run of ``rcPd`` chunks of zeros inserted before ``IEND``;
    the parts are generated as they are sent, so a 60 MB file never sits in
    memory. Without a size (or one smaller than the picture) the file is sent
    as it is.
    """
    need = (total_size or 0) - len(png_bytes)
    sizes: list[int] = []
    while need >= 12:
        size = min(need - 12, _PAD_CHUNK_DATA)
        sizes.append(size)
        need -= size + 12
    head, iend = png_bytes[:-12], png_bytes[-12:]
    length = len(png_bytes) + sum(size + 12 for size in sizes)

    def parts() -> Iterator[bytes]:
        for offset in range(0, len(head), len(_ZEROS)):
            yield head[offset : offset + len(_ZEROS)]
        for size in sizes:
            yield struct.pack(">I", size) + PAD_CHUNK_TYPE
            for offset in range(0, size, len(_ZEROS)):
                yield _ZEROS[: min(len(_ZEROS), size - offset)]
            yield struct.pack(">I", _pad_crc(size))
        yield iend

    return length, parts()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _pad_crc(size: int) -> int:
    """CRC of a padding chunk of ``size`` zero bytes (zlib's CRC runs at memory speed: no cache needed)."""
    crc = zlib.crc32(PAD_CHUNK_TYPE)
    for offset in range(0, size, len(_ZEROS)):
        crc = zlib.crc32(_ZEROS[: min(len(_ZEROS), size - offset)], crc)
    return crc
