"""Small pictures for the view's pages, made on the API server with Pillow and kept on its disk.

RunComfy's outputs are 1-4 MB; a gallery page shows 24 pictures in frames about 200 px
wide. Sent whole, the first view of a page moves 12-48 MB. So a page asks for a
thumbnail (``?size=thumb``, 256 px, or ``?size=view``, 768 px, WebP) and the picture
itself opens full size on a click.

A thumbnail is made once, from the bytes the view may serve anyway (``media``: a kept
copy, a URL through the URL policy, an inline picture), and kept in a folder the API
server owns (``[runcomfy] thumbnail_dir``, by default ``$AIRFLOW_HOME/runcomfy-thumbnails``),
named by a digest of where the picture came from and what it was (a copy's sha256 or
size and time; a RunComfy URL never changes). Nothing a browser sends names a file here.

Decoding is the dangerous part of an image library: only the formats a RunComfy model
writes are opened, a picture with more than ``MAX_PIXELS`` pixels is refused before it
is decoded (Pillow's decompression-bomb check, made an error), and at most two
thumbnails are made at once per process.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest side of each size, in pixels (tiles are about 200 CSS px wide; the task page's ~700).
SIZES = {"thumb": 256, "view": 768}
#: Pictures with more pixels are not decoded (a 64 MP photo is the largest a model writes).
MAX_PIXELS = 64_000_000
#: The formats a RunComfy image model writes; nothing else is handed to a decoder.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "AVIF")
#: WebP quality of the thumbnails.
QUALITY = 72
#: Thumbnails kept at most; past it the oldest half is removed.
MAX_FILES = 20_000
#: A thumbnail of a URL is made again after this long (an input URL may come to show another picture).
URL_TTL_SECONDS = 24 * 3600
#: Thumbnails made at once per API server process (each decodes a picture: CPU and memory).
MAX_CONCURRENT = 2

_making = threading.BoundedSemaphore(MAX_CONCURRENT)


class ThumbnailError(Exception):
    """The picture cannot be made small (not a format shown here, too many pixels, broken)."""


def make_thumbnail(data: bytes, side: int) -> bytes:
    """``data`` (a PNG, JPEG, WebP, GIF or AVIF) scaled to fit ``side`` x ``side``, as WebP."""
    from PIL import Image, UnidentifiedImageError

    with _making, warnings.catch_warnings():
        # Pillow warns past MAX_IMAGE_PIXELS and raises past twice that: here, it refuses at once.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ThumbnailError(
                        f"{image.width} x {image.height} pixels is more than this view decodes"
                    )
                image.draft("RGB", (side, side))  # JPEG: decode at a fraction of the size
                image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    image = image.convert("RGBA")
                elif image.mode != "RGB":
                    image = image.convert("RGB")
                out = io.BytesIO()
                image.save(out, "WEBP", quality=QUALITY, method=4)
        except (
            UnidentifiedImageError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as error:
            raise ThumbnailError(str(error)[:200]) from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:  # a cut or corrupt file
            raise ThumbnailError(f"the picture cannot be decoded ({type(error).__name__})") from None
    return out.getvalue()


def default_folder() -> Path:
    """``[runcomfy] thumbnail_dir``, else ``$AIRFLOW_HOME/runcomfy-thumbnails``."""
    from airflow.configuration import AIRFLOW_HOME, conf

    configured = conf.get("runcomfy", "thumbnail_dir", fallback="") or ""
    return Path(configured or os.path.join(AIRFLOW_HOME, "runcomfy-thumbnails"))


class ThumbnailCache:
    """Thumbnails on the API server's disk, by a digest of what they are of.

    :param folder: where they are kept (made on first use).
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._written = 0
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = default_folder()
        return self._folder

    def path(self, identity: str, side: int) -> Path:
        digest = hashlib.sha256(f"{side}\n{identity}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.webp"

    def get(self, identity: str, side: int, *, max_age: float | None = None) -> bytes | None:
        """The kept thumbnail, or None (none yet, or older than ``max_age`` seconds)."""
        path = self.path(identity, side)
        try:
            if max_age is not None and time.time() - path.stat().st_mtime > max_age:
                return None
            return path.read_bytes()
        except OSError:
            return None

    def put(self, identity: str, side: int, thumbnail: bytes) -> None:
        """Keep ``thumbnail`` (written whole, then renamed: a reader never sees half of one)."""
        path = self.path(identity, side)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as part:
                part.write(thumbnail)
            os.replace(part.name, path)
        except OSError as error:  # a read-only or full disk costs speed, not the page
            log.warning("Could not keep a thumbnail in %s: %s", self.folder, error)
            return
        with self._lock:
            self._written += 1
            prune = self._written % 500 == 0
        if prune:
            self.prune()

    def prune(self, max_files: int = MAX_FILES) -> int:
        """Remove the oldest half when more than ``max_files`` are kept; how many were removed."""
        files = list(self.folder.glob("*/*.webp"))
        if len(files) <= max_files:
            return 0
        files.sort(key=lambda f: f.stat().st_mtime)
        removed = 0
        for old in files[: len(files) - max_files // 2]:
            try:
                old.unlink()
                removed += 1
            except OSError:
                pass
        return removed


#: The API server's one cache.
THUMBNAILS = ThumbnailCache()
