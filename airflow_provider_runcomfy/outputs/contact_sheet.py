"""A contact sheet: one row per item of a batch, its input beside its outputs, in one PNG.

After a batch of hundreds of edits, a person wants to see at a glance what
came out, and which items failed. The sheet has one row per item: a status
mark (green: succeeded, red: failed), the input picture, then each output.
A picture that cannot be decoded -- anything but PNG, since the decoder is
pypng (pure Python, no compiled dependency), or one too large to decode
quickly -- is drawn as a grey placeholder; a cell with nothing to show (a
failed item has no outputs) stays empty. A PNG whose compressed data inflates
to more than its header declares (a decompression bomb: 64 x 64 pixels that
inflate to 400 MB) is refused as soon as it passes that size.

The sheet is written row by row, with only one row of thumbnails in memory,
so its size does not limit the batch; pictures are read from where they are
kept (the copies in ``output_dir``), never whole into memory.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import IO, Any

import png

from airflow_provider_runcomfy.client.download import OutputDownloader, OutputDownloadError, Sink

log = logging.getLogger(__name__)

#: Side of the square each thumbnail is fitted into, in pixels.
CELL = 160
#: Space around and between cells.
GAP = 8
#: Width of the status mark at the left of each row.
MARK = 6
#: Pictures with more pixels than this are not decoded (pure-Python decoding would take too long).
MAX_PIXELS = 16_000_000
#: The most bytes fetched to draw one input picture.
MAX_INPUT_BYTES = 50_000_000

WHITE = (255, 255, 255)
CELL_BACKGROUND = (236, 236, 236)
PLACEHOLDER = (158, 158, 158)
PLACEHOLDER_CROSS = (117, 117, 117)
SUCCEEDED = (46, 125, 50)
FAILED = (198, 40, 40)

#: Opens one picture for reading (a binary file object); raising means "cannot be shown".
ImageSource = Callable[[], AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class SheetRow:
    """One item: its pictures (input first, then outputs; None: an empty cell) and its outcome."""

    images: Sequence[ImageSource | None]
    succeeded: bool


@dataclass(frozen=True)
class Thumbnail:
    """A decoded, scaled picture: ``rows`` of ``width`` RGB pixels (3 bytes each)."""

    width: int
    height: int
    rows: list[bytes]


def sheet_size(rows: int, columns: int, cell: int = CELL) -> tuple[int, int]:
    """``(width, height)`` in pixels of a sheet of ``rows`` items and ``columns`` pictures per row."""
    return GAP + MARK + GAP + columns * (cell + GAP), GAP + rows * (cell + GAP)


def write_contact_sheet(
    out: Sink, rows: Sequence[SheetRow], *, columns: int | None = None, cell: int = CELL
) -> tuple[int, int]:
    """Draw ``rows`` as a PNG into ``out``; returns its ``(width, height)``.

    :param columns: pictures per row; by default the most any row has, and at least 2
        (the input and one output), so failed items keep their place in the grid.
    """
    columns = columns or max([2, *(len(row.images) for row in rows)])
    width, height = sheet_size(len(rows), columns, cell)
    writer = png.Writer(width, height, greyscale=False, alpha=False, bitdepth=8, compression=6)
    writer.write(out, _pixel_rows(rows, columns, cell, width))
    return width, height


def _pixel_rows(rows: Sequence[SheetRow], columns: int, cell: int, width: int) -> Iterator[bytearray]:
    blank = bytearray(WHITE * width)
    for _ in range(GAP):
        yield bytearray(blank)
    for row in rows:
        thumbs = [_cell_content(source, cell) for source in row.images[:columns]]
        band = [bytearray(blank) for _ in range(cell)]
        mark = SUCCEEDED if row.succeeded else FAILED
        for line in band:
            _fill(line, GAP, MARK, mark)
        for column in range(columns):
            left = GAP + MARK + GAP + column * (cell + GAP)
            content = thumbs[column] if column < len(thumbs) else None
            _draw_cell(band, left, cell, content)
        yield from band
        for _ in range(GAP):
            yield bytearray(blank)


def _cell_content(source: ImageSource | None, cell: int) -> Thumbnail | str | None:
    """A thumbnail, ``"placeholder"`` when the picture cannot be shown, or None for an empty cell."""
    if source is None:
        return None
    try:
        return thumbnail(source, cell) or "placeholder"
    except Exception as error:  # whatever went wrong (fetch, format, size), the sheet still gets drawn
        log.info("Drawing a placeholder for a picture that cannot be shown: %s", error)
        return "placeholder"


def _draw_cell(band: list[bytearray], left: int, cell: int, content: Thumbnail | str | None) -> None:
    if isinstance(content, Thumbnail):
        for line in band:
            _fill(line, left, cell, CELL_BACKGROUND)
        top, x = (cell - content.height) // 2, left + (cell - content.width) // 2
        for y, pixels in enumerate(content.rows):
            band[top + y][x * 3 : (x + content.width) * 3] = pixels
    elif content == "placeholder":
        for y, line in enumerate(band):
            _fill(line, left, cell, PLACEHOLDER)
            for x in {y, cell - 1 - y}:  # a cross: "there is a picture here, but it cannot be shown"
                _fill(line, left + x, 1, PLACEHOLDER_CROSS)
    else:
        for line in band:
            _fill(line, left, cell, CELL_BACKGROUND)


def _fill(line: bytearray, left: int, count: int, colour: tuple[int, int, int]) -> None:
    line[left * 3 : (left + count) * 3] = bytes(colour) * count


def thumbnail(source: ImageSource, cell: int = CELL) -> Thumbnail | None:
    """Decode a PNG from ``source`` and scale it to fit ``cell`` x ``cell``; None if it is too large.

    Raises (``png.FormatError`` and the like) when it is not a PNG pypng can read.

    Rows are read as they are decoded and only those the thumbnail needs are kept
    (nearest-neighbour sampling), so memory stays small whatever the picture's size.
    """
    with source() as file:
        width, height, pixels, _ = BoundedPNGReader(file=file).asRGBA8()  # png.FormatError if not a PNG
        if width * height > MAX_PIXELS:
            return None
        scale = min(cell / width, cell / height)
        thumb_w, thumb_h = max(1, round(width * scale)), max(1, round(height * scale))
        wanted: dict[int, list[int]] = {}
        for ty in range(thumb_h):
            wanted.setdefault(min(height - 1, int((ty + 0.5) * height / thumb_h)), []).append(ty)
        columns = [min(width - 1, int((tx + 0.5) * width / thumb_w)) * 4 for tx in range(thumb_w)]
        rows: list[bytes] = [b""] * thumb_h
        last = max(wanted)
        for y, row in enumerate(pixels):
            if y in wanted:
                line = _sample(row, columns)
                for ty in wanted[y]:
                    rows[ty] = line
            if y >= last:
                break
    return Thumbnail(thumb_w, thumb_h, rows)


class BoundedPNGReader(png.Reader):
    """pypng's reader, refusing a PNG whose image data inflates past what its header declares.

    pypng inflates each ``IDAT`` chunk whole (zlib without ``max_length``), and checks the
    size only after. Here each chunk is first inflated in bounded pieces, output discarded,
    against the exact size the header implies (rows of ``ceil(width x channels x bit depth / 8)``
    bytes plus one filter byte, per Adam7 pass when interlaced); pypng sees a chunk only when
    everything so far fits. The price is inflating the data twice.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflater: Any = None
        self._inflated = 0
        self._allowed = 0

    def chunk(self, lenient: bool = False) -> tuple[bytes, bytes]:
        kind, data = super().chunk(lenient=lenient)
        if kind == b"IDAT":
            self._check(data)
        return kind, data

    def _check(self, data: bytes) -> None:
        if self._inflater is None:  # the first IDAT: the header has been read
            self._allowed = decoded_size(self.width, self.height, self.planes, self.bitdepth, self.interlace)
            self._inflater = zlib.decompressobj()
        while data and not self._inflater.eof:
            self._inflated += len(self._inflater.decompress(data, 64 * 1024))
            if self._inflated > self._allowed:
                raise png.FormatError(
                    f"the picture's data inflates to more than the {self._allowed} bytes its "
                    f"{self.width} x {self.height} header declares (a decompression bomb?)"
                )
            data = self._inflater.unconsumed_tail


def decoded_size(width: int, height: int, planes: int, bitdepth: int, interlace: int | bool) -> int:
    """The bytes a PNG's inflated image data has: filtered rows, one filter byte each (per Adam7 pass)."""
    passes = (
        [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        if interlace
        else [(0, 0, 1, 1)]
    )
    total = 0
    for x0, y0, dx, dy in passes:
        columns = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if columns and rows:
            total += rows * (1 + (columns * planes * bitdepth + 7) // 8)
    return total


def _sample(row: Any, columns: list[int]) -> bytes:
    """The RGB pixels at ``columns`` of an RGBA row, transparent ones laid over the cell's grey."""
    out = bytearray(len(columns) * 3)
    for i, x in enumerate(columns):
        r, g, b, a = row[x], row[x + 1], row[x + 2], row[x + 3]
        if a != 255:
            r = (r * a + CELL_BACKGROUND[0] * (255 - a)) // 255
            g = (g * a + CELL_BACKGROUND[1] * (255 - a)) // 255
            b = (b * a + CELL_BACKGROUND[2] * (255 - a)) // 255
        out[i * 3] = r
        out[i * 3 + 1] = g
        out[i * 3 + 2] = b
    return bytes(out)


# -- where pictures come from --------------------------------------------------------------------


def stored_image(uri: str) -> ImageSource:
    """A picture kept in ``output_dir`` (any ``ObjectStoragePath`` URI), read in place."""

    @contextmanager
    def open_image() -> Iterator[IO[bytes]]:
        from airflow_provider_runcomfy.outputs.files import storage_path

        # Resolved as output_dir was when the copy was written (the same filesystem serves it).
        path = storage_path(uri, argument="the kept copy", access="read")
        with path.fs.open(path.path, "rb") as file:
            yield file

    return open_image


def url_image(url: str, *, max_bytes: int = MAX_INPUT_BYTES, api_base_url: str | None = None) -> ImageSource:
    """A picture at a URL: a ``data:`` URI, or fetched like an output (URL policy, capped, no token).

    :param api_base_url: the RunComfy API's base URL, which decides the URL policy
        (``client.download.check_fetch_url``); None: RunComfy's own, https to public hosts only.
    """

    @contextmanager
    def open_image() -> Iterator[IO[bytes]]:
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            yield io.BytesIO(base64.b64decode(data) if header.endswith(";base64") else data.encode())
            return
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:

            @contextmanager
            def open_sink() -> Iterator[Sink]:
                spool.seek(0)
                spool.truncate()
                yield spool

            try:
                with OutputDownloader(
                    max_bytes=max_bytes,
                    attempts=1,
                    connect_timeout=5,
                    read_timeout=15,
                    max_seconds=60,
                    api_base_url=api_base_url,
                ) as http:
                    http.download(url, open_sink)
            except OutputDownloadError as error:
                raise LookupError(f"could not fetch {url[:120]}: {error.message}") from None
            spool.seek(0)
            yield spool

    return open_image


def rows_from_records(
    records: Sequence[dict[str, Any]], *, api_base_url: str | None = None
) -> list[SheetRow]:
    """Sheet rows from manifest records (``manifest.batch_records``): the input, then the kept copies.

    The outputs are read from their copies, not from RunComfy's temporary URLs; an item whose
    outputs were not kept shows its output URLs instead, while they still answer.

    :param api_base_url: the RunComfy API's base URL, for the URL policy of what is fetched.
    """
    rows = []
    for record in records:
        given = record.get("input")
        first = given[0] if isinstance(given, list) and given else given
        images: list[ImageSource | None] = [
            url_image(first, api_base_url=api_base_url) if isinstance(first, str) else None
        ]
        kept = [stored_image(copy["uri"]) for copy in record.get("stored") or []]
        images += kept or [url_image(url, api_base_url=api_base_url) for url in record.get("outputs") or []]
        rows.append(SheetRow(images, record.get("status") == "succeeded"))
    return rows
