"""Real PNG pictures for the emulator, drawn and edited in pure Python.

A ``Raster`` is an RGB8 ``bytearray``. Every operation works a row or a
channel at a time with slice assignment, ``bytes.translate`` and
``operator.itemgetter``, which run in C: a 512 px picture is drawn, edited
and encoded in a few tens of milliseconds with no compiled dependency
beyond zlib. pypng reads and writes the files.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from operator import itemgetter

import png

Color = tuple[int, int, int]

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

    def __init__(self, width: int, height: int, fill: Color = (0, 0, 0)) -> None:
        self.width = width
        self.height = height
        self.data = bytearray(bytes(fill) * (width * height))

    @property
    def stride(self) -> int:
        """Bytes per row."""
        return self.width * 3

    def row(self, y: int) -> bytearray:
        """A copy of row ``y``."""
        return self.data[y * self.stride : (y + 1) * self.stride]

    def span(self, y: int, x0: float, x1: float, color: Color) -> None:
        """Fill pixels ``x0 <= x < x1`` of row ``y``, clipped to the picture."""
        if not 0 <= y < self.height:
            return
        start, end = max(0, round(x0)), min(self.width, round(x1))
        if end > start:
            offset = y * self.stride
            self.data[offset + start * 3 : offset + end * 3] = bytes(color) * (end - start)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Fill the rectangle ``[x0, x1) x [y0, y1)`` (one slice assignment a row)."""
        start, end = max(0, round(x0)), min(self.width, round(x1))
        if end <= start:
            return
        run, stride, data = bytes(color) * (end - start), self.stride, self.data
        for y in range(max(0, round(y0)), min(self.height, round(y1))):
            data[y * stride + start * 3 : y * stride + end * 3] = run

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color) -> None:
        """Fill the ellipse centred on ``(cx, cy)`` with radii ``rx`` and ``ry``."""
        if rx <= 0 or ry <= 0:
            return
        for y in range(max(0, math.floor(cy - ry)), min(self.height, math.ceil(cy + ry) + 1)):
            dy = (y + 0.5 - cy) / ry
            if abs(dy) < 1:
                half = rx * math.sqrt(1 - dy * dy)
                self.span(y, cx - half, cx + half, color)

    def polygon(self, points: Sequence[tuple[float, float]], color: Color) -> None:
        """Fill a simple polygon (even-odd rule) given by its corners."""
        edges = list(zip(points, [*points[1:], points[0]], strict=True))
        top = max(0, math.floor(min(p[1] for p in points)))
        bottom = min(self.height, math.ceil(max(p[1] for p in points)) + 1)
        for y in range(top, bottom):
            yc = y + 0.5
            xs = sorted(
                x0 + (yc - y0) * (x1 - x0) / (y1 - y0)
                for (x0, y0), (x1, y1) in edges
                if (y0 <= yc < y1) or (y1 <= yc < y0)
            )
            for left, right in zip(xs[::2], xs[1::2], strict=False):
                self.span(y, left, right, color)

    def vgradient(self, y0: float, y1: float, top: Color, bottom: Color) -> None:
        """Fill rows ``y0 <= y < y1`` with a vertical gradient from ``top`` to ``bottom``."""
        first, last = max(0, round(y0)), min(self.height, round(y1))
        steps = max(1, last - first - 1)
        for y in range(first, last):
            self.span(y, 0, self.width, mix(top, bottom, (y - first) / steps))

    def tint(self, color: Color, strength: float) -> None:
        """Blend every pixel towards ``color`` by ``strength`` (0..1), one channel at a time."""
        for channel, target in enumerate(color):
            table = bytes(round(v + (target - v) * strength) for v in range(256))
            self.data[channel::3] = self.data[channel::3].translate(table)

    def mirror(self) -> None:
        """Flip the picture left to right."""
        stride = self.stride
        for y in range(self.height):
            backwards = self.data[y * stride : (y + 1) * stride][::-1]  # pixels reversed, as B,G,R
            row = bytearray(stride)
            row[0::3], row[1::3], row[2::3] = backwards[2::3], backwards[1::3], backwards[0::3]
            self.data[y * stride : (y + 1) * stride] = row

    def border(self, thickness: int, color: Color) -> None:
        """Draw a frame ``thickness`` pixels wide along the edges."""
        self.rect(0, 0, self.width, thickness, color)
        self.rect(0, self.height - thickness, self.width, self.height, color)
        self.rect(0, 0, thickness, self.height, color)
        self.rect(self.width - thickness, 0, self.width, self.height, color)

    def encode(self) -> bytes:
        """The picture as a PNG file (8-bit RGB, filter type 0, fast compression: quick to write and read)."""
        out = io.BytesIO()
        writer = png.Writer(self.width, self.height, greyscale=False, bitdepth=8, compression=1)
        stride, data = self.stride, self.data
        writer.write_packed(out, (data[i : i + stride] for i in range(0, len(data), stride)))
        return out.getvalue()


def mix(a: Color, b: Color, t: float) -> Color:
    """The colour ``t`` of the way from ``a`` to ``b``."""
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def hue_color(hue: float, saturation: float = 0.65, value: float = 0.95) -> Color:
    """An RGB colour from HSV components in 0..1."""
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


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


def _column_picker(x0: int, crop_w: int, out_w: int) -> itemgetter[tuple[int, ...]]:
    """An ``itemgetter`` that picks the bytes of the nearest source pixel for each output column."""
    indices: list[int] = []
    for x in range(out_w):
        sx = (x0 + x * crop_w // out_w) * 3
        indices.extend((sx, sx + 1, sx + 2))
    return itemgetter(*indices)


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
    """Decode a PNG and fit it to ``aspect`` (``None``: keep its own ratio), converting only needed rows.

    Rows are streamed from pypng and only those the output samples are
    converted to RGB, so a large input costs decoding time but not memory.
    """
    try:
        check_inflated_size(data)
        reader = png.Reader(bytes=data)
        reader.preamble()
        width, height = reader.width, reader.height
        out_w, out_h = target_size(aspect, long_side, (width, height))
        x0, y0, crop_w, crop_h = crop_box(width, height, out_w, out_h)
        _, _, rows, info = reader.asDirect()
        planes = info["planes"]
        if info["bitdepth"] != 8:
            _, _, rows, info = png.Reader(bytes=data).asRGBA8()
            planes = 4
        wanted: dict[int, list[int]] = {}
        for y in range(out_h):
            wanted.setdefault(y0 + y * crop_h // out_h, []).append(y)
        pick = _column_picker(x0, crop_w, out_w)
        out = Raster(out_w, out_h)
        for sy, row in enumerate(rows):
            if sy in wanted:
                line = bytes(pick(_to_rgb(row, planes, width)))
                for y in wanted[sy]:
                    out.data[y * out.stride : (y + 1) * out.stride] = line
            if sy >= y0 + crop_h:
                break
        return out
    except (png.Error, ValueError, KeyError, zlib.error) as exc:
        raise UnreadablePNG(str(exc)) from exc


def _to_rgb(row: Sequence[int], planes: int, width: int) -> bytearray:
    """One decoded row (grey, grey+alpha, RGB or RGBA values) as RGB bytes; alpha is dropped."""
    values = bytes(row)
    if planes == 3:
        return bytearray(values)
    rgb = bytearray(width * 3)
    if planes in (1, 2):
        grey = values[::planes]
        rgb[0::3] = rgb[1::3] = rgb[2::3] = grey
    else:
        rgb[0::3], rgb[1::3], rgb[2::3] = values[0::4], values[1::4], values[2::4]
    return rgb


def apply_edit(picture: Raster, seed: bytes) -> None:
    """Make the "edit" visible and specific to ``seed``: tint, mirror, frame and a coded band.

    The tint hue and the band's colour blocks come from the seed (a hash of
    the prompt, the model's seed and the output index), so two prompts give
    pixel-different pictures and one prompt always gives the same picture.
    """
    accent = hue_color(seed[0] / 256)
    picture.tint(accent, 0.3)
    picture.mirror()
    long_side = max(picture.width, picture.height)
    picture.border(max(2, long_side // 64), mix(accent, (0, 0, 0), 0.45))
    band = max(4, picture.height // 14)
    top = picture.height - max(2, long_side // 64) - band
    blocks = 16
    block_w = picture.width / blocks
    for i in range(blocks):
        color = hue_color(seed[1 + i] / 256, 0.55 + (seed[17 + i % 15] % 40) / 100, 0.9)
        picture.rect(i * block_w, top, (i + 1) * block_w, top + band, color)


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
