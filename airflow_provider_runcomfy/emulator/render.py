"""Turning a job into output PNG files: the emulator's "model".

An output is the job's input picture (decoded, or drawn as a stand-in),
cropped to the requested aspect ratio and visibly edited from a hash of
the prompt, the seed and the output's index. It runs in a worker thread
(pure Python, tens of milliseconds) and is cached, since the provider
usually downloads each file once but may retry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from airflow_provider_runcomfy.emulator import scenes
from airflow_provider_runcomfy.emulator.images import (
    Raster,
    UnreadablePNG,
    apply_edit,
    decode_fitted,
    digest,
    target_size,
)

#: The picture ratio used when neither the request nor an input picture gives one.
DEFAULT_RATIO = (4, 3)


@dataclass(frozen=True)
class InputPicture:
    """An input image as the emulator got it: PNG bytes it can decode, or a seed to draw a stand-in from."""

    png: bytes | None = None
    stand_in_seed: str | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Everything one output file depends on (and so the key it is cached under)."""

    prompt: str
    seed: int | None
    index: int
    aspect: tuple[int, int] | None
    long_side: int


def render_output(picture: InputPicture | None, spec: OutputSpec) -> bytes:
    """The PNG of one output: the input fitted to ``spec.aspect`` and edited, or a drawn picture."""
    base = _base_picture(picture, spec)
    canvas = Raster(base.width, base.height)
    canvas.data[:] = base.data  # the cached base stays as it is; the edit works on a copy
    apply_edit(canvas, digest(spec.prompt, spec.seed, spec.index))
    return canvas.encode()


#: Decoded (or drawn) pictures before the edit, by input and size. Decoding is most of a render's
#: cost, and a batch often runs many prompts over one input: it is paid once. 512 px: ~0.8 MB each.
_BASES: OrderedDict[tuple[str, tuple[int, int] | None, int], Raster] = OrderedDict()
_BASES_SIZE = 16
_BASES_LOCK = threading.Lock()


def _base_picture(picture: InputPicture | None, spec: OutputSpec) -> Raster:
    if picture is not None and picture.png is not None:
        identity = "png:" + digest(picture.png).hex()
    elif picture is not None and picture.stand_in_seed is not None:
        identity = "seed:" + picture.stand_in_seed
    else:
        identity = "prompt:" + digest("prompt", spec.prompt, spec.seed).hex()
    key = (identity, spec.aspect, spec.long_side)
    with _BASES_LOCK:
        if key in _BASES:
            _BASES.move_to_end(key)
            return _BASES[key]
    canvas: Raster | None = None
    if picture is not None and picture.png is not None:
        try:
            canvas = decode_fitted(picture.png, spec.aspect, spec.long_side)
        except UnreadablePNG:
            canvas = None  # e.g. an interlaced PNG or a PNG bomb: a stand-in drawn from its bytes
        stand_in = picture.stand_in_seed or identity[4:]
    else:
        stand_in = identity.split(":", 1)[1]
    if canvas is None:
        width, height = target_size(spec.aspect, spec.long_side, DEFAULT_RATIO)
        canvas = scenes.draw(stand_in, width, height)
    with _BASES_LOCK:
        _BASES[key] = canvas
        while len(_BASES) > _BASES_SIZE:
            _BASES.popitem(last=False)
    return canvas


class RenderCache:
    """A small thread-safe LRU of rendered files, keyed by request id and output index."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        """The cached file, or ``None``."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: tuple[str, int], data: bytes) -> None:
        """Remember a file, forgetting the least recently used beyond the size."""
        with self._lock:
            self._items[key] = data
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
