"""The emulator's "model": sample pictures, stand-ins, and the edit that turns an input into an output.

An output is the job's input picture (decoded; or a stand-in drawn from a
seed when the input cannot be read), cropped to the requested aspect ratio
and visibly edited from a hash of the prompt, the seed and the output's
index: tinted, mirrored, framed, with a band of colour blocks. It runs in a
worker thread (pure Python, tens of milliseconds).
"""

from __future__ import annotations

import colorsys
import contextlib
import functools
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from airflow_provider_runcomfy.emulator.images import (
    Color,
    Raster,
    UnreadablePNG,
    decode_fitted,
    digest,
    target_size,
)
from airflow_provider_runcomfy.emulator.jobs import InputPicture

#: The picture ratio used when neither the request nor an input picture gives one.
DEFAULT_RATIO = (4, 3)

_WINDOW, _LANE = (250, 225, 140), (235, 235, 225)
#: Each scene is a few shapes, in fractions of the picture: ``("sky", y0, y1, top, bottom)``
#: (a vertical gradient), ``("rect", x0, y0, x1, y1, colour)``, ``("oval", cx, cy, rx, ry, colour)``.
SCENES: dict[str, tuple[tuple[Any, ...], ...]] = {
    "portrait": (
        ("sky", 0, 1, (150, 175, 205), (80, 100, 140)),
        ("oval", 0.5, 1.05, 0.46, 0.3, (60, 90, 150)),  # shoulders
        ("rect", 0.43, 0.6, 0.57, 0.8, (205, 160, 130)),  # neck
        ("oval", 0.5, 0.4, 0.25, 0.27, (70, 45, 30)),  # hair
        ("oval", 0.5, 0.44, 0.19, 0.23, (235, 195, 165)),  # face
        *(("oval", x, 0.43, 0.035, 0.017, (250, 250, 250)) for x in (0.425, 0.575)),
        *(("oval", x, 0.43, 0.013, 0.013, (60, 90, 120)) for x in (0.425, 0.575)),
        ("oval", 0.5, 0.55, 0.055, 0.013, (180, 70, 80)),  # mouth
    ),
    "street": (
        ("sky", 0, 0.72, (120, 170, 220), (225, 210, 190)),
        ("rect", 0, 0.3, 0.22, 0.72, (170, 90, 70)),
        ("rect", 0.23, 0.15, 0.45, 0.72, (190, 180, 160)),
        ("rect", 0.46, 0.35, 0.7, 0.72, (120, 125, 140)),
        ("rect", 0.71, 0.22, 1, 0.72, (210, 170, 110)),
        *(
            ("rect", x, y, x + 0.04, y + 0.06, _WINDOW)
            for x in (0.05, 0.13, 0.28, 0.36, 0.52, 0.6, 0.78, 0.88)
            for y in (0.42, 0.56)
        ),
        ("rect", 0, 0.72, 1, 0.78, (170, 170, 165)),  # pavement
        ("rect", 0, 0.78, 1, 1, (60, 62, 66)),  # road
        *(("rect", i / 8 + 0.02, 0.885, i / 8 + 0.08, 0.9, _LANE) for i in range(8)),
        ("rect", 0.41, 0.805, 0.59, 0.865, (200, 40, 40)),  # a car
        ("rect", 0.45, 0.77, 0.55, 0.805, (210, 220, 235)),
        *(("oval", x, 0.868, 0.017, 0.022, (25, 25, 25)) for x in (0.445, 0.555)),
    ),
    "product": (
        ("sky", 0, 0.75, (235, 235, 232), (200, 200, 198)),
        ("sky", 0.75, 1, (215, 213, 210), (245, 244, 240)),
        ("oval", 0.5, 0.8, 0.29, 0.03, (165, 163, 160)),  # shadow
        ("rect", 0.39, 0.38, 0.61, 0.8, (40, 120, 90)),  # a bottle
        ("oval", 0.5, 0.38, 0.11, 0.06, (40, 120, 90)),
        ("rect", 0.46, 0.22, 0.54, 0.36, (40, 120, 90)),
        ("rect", 0.45, 0.17, 0.55, 0.23, (40, 40, 45)),  # cap
        ("rect", 0.39, 0.5, 0.61, 0.66, (245, 240, 225)),  # label
        ("rect", 0.39, 0.56, 0.61, 0.59, (220, 60, 60)),
        ("rect", 0.41, 0.4, 0.43, 0.78, (150, 200, 180)),  # highlight
    ),
    "landscape": (
        ("sky", 0, 0.62, (70, 130, 210), (200, 225, 245)),
        ("oval", 0.75, 0.2, 0.05, 0.09, (255, 220, 90)),  # sun
        ("oval", 0.25, 0.64, 0.4, 0.22, (120, 135, 165)),  # hills
        ("oval", 0.75, 0.65, 0.35, 0.15, (80, 105, 95)),
        ("sky", 0.62, 1, (95, 160, 70), (45, 110, 40)),  # meadow
        ("oval", 0.38, 0.82, 0.18, 0.05, (80, 140, 200)),  # lake
        *(("rect", x - 0.008, 0.66, x + 0.008, 0.72, (90, 60, 35)) for x in (0.1, 0.6, 0.85)),
        *(("oval", x, 0.63, 0.03, 0.06, (30, 85, 40)) for x in (0.1, 0.6, 0.85)),
    ),
}

#: The sample inputs served under ``/samples/``: name -> (width, height).
SAMPLES: dict[str, tuple[int, int]] = {
    "portrait": (384, 512),
    "street": (512, 384),
    "product": (512, 512),
    "landscape": (512, 288),
}


def _hue(hue: float, saturation: float = 0.65, value: float = 0.95) -> Color:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def draw(scene: str, width: int, height: int, shift: float = 0.0) -> Raster:
    """Scene ``scene`` at ``width`` x ``height``, its shapes moved right by ``shift`` of the width."""
    pic, w, h = Raster(width, height), width, height
    for op, a, b, *rest in SCENES[scene]:
        if op == "sky":  # a vertical gradient from the colour ``rest[0]`` to ``rest[1]``
            first, last = round(a * h), round(b * h)
            for y in range(first, last):
                t = (y - first) / max(1, last - first - 1)
                pic.rect(0, y, w, y + 1, tuple(round(p + (q - p) * t) for p, q in zip(*rest, strict=True)))
        elif op == "rect":
            x1, y1, color = rest
            pic.rect((a + shift) * w, b * h, (x1 + shift) * w, y1 * h, color)
        else:
            rx, ry, color = rest
            pic.ellipse((a + shift) * w, b * h, rx * w, ry * h, color)
    return pic


def stand_in(seed: str, width: int, height: int) -> Raster:
    """A picture for an input the emulator cannot read: scene, placement and tint chosen by ``seed``."""
    rng = random.Random(seed)
    pic = draw(rng.choice(sorted(SCENES)), width, height, shift=rng.uniform(-0.15, 0.15))
    pic.tint(_hue(rng.random()), 0.25)
    return pic


@functools.lru_cache(maxsize=len(SAMPLES))
def sample_png(name: str) -> bytes:
    """The PNG of sample ``name`` (a key of ``SAMPLES``); drawn once per process."""
    return draw(name, *SAMPLES[name]).encode()


def apply_edit(picture: Raster, seed: bytes) -> None:
    """Make the "edit" visible and specific to ``seed``: tint, mirror, a frame and a band of colour blocks.

    The colours come from ``seed`` (a hash of the prompt, the model's seed
    and the output index), so two prompts give pixel-different pictures and
    one prompt always gives the same picture.
    """
    w, h = picture.width, picture.height
    accent = _hue(seed[0] / 256)
    picture.tint(accent, 0.3)
    picture.mirror()
    edge, band = max(2, max(w, h) // 64), max(4, h // 14)
    frame = (accent[0] * 11 // 20, accent[1] * 11 // 20, accent[2] * 11 // 20)
    for box in ((0, 0, w, edge), (0, h - edge, w, h), (0, 0, edge, h), (w - edge, 0, w, h)):
        picture.rect(*box, frame)
    for i in range(16):
        color = _hue(seed[1 + i] / 256, 0.55 + (seed[17 + i % 15] % 40) / 100, 0.9)
        picture.rect(i * w / 16, h - edge - band, (i + 1) * w / 16, h - edge, color)


@dataclass(frozen=True)
class OutputSpec:
    """Everything one output file depends on (and so the key it is cached under)."""

    prompt: str
    seed: int | None
    index: int
    aspect: tuple[int, int] | None
    long_side: int


def render_output(picture: InputPicture | None, spec: OutputSpec) -> bytes:
    """The PNG of one output: the input fitted to ``spec.aspect`` and edited (a stand-in if unreadable)."""
    # No input picture at all (a text-to-image model): a stand-in drawn from the prompt.
    identity = (
        picture.identity
        if picture is not None
        else "prompt:" + digest("prompt", spec.prompt, spec.seed).hex()
    )

    def base() -> Raster:
        if picture is not None and picture.png is not None:
            with contextlib.suppress(UnreadablePNG):  # e.g. a PNG bomb: a stand-in drawn from its bytes
                return decode_fitted(picture.png, spec.aspect, spec.long_side)
        return stand_in(identity, *target_size(spec.aspect, spec.long_side, DEFAULT_RATIO))

    def output() -> bytes:
        # Decoding is most of a render's cost, and a batch often runs many prompts over one input.
        fitted = _cached((identity, spec.aspect, spec.long_side), base)
        canvas = Raster(fitted.width, fitted.height, fitted.data)  # the cached one stays as it is
        apply_edit(canvas, digest(spec.prompt, spec.seed, spec.index))
        return canvas.encode()

    return _cached((identity, spec), output)  # a client may download a file again


T = TypeVar("T")
#: Fitted inputs (~0.8 MB at 512 px) and output files, keyed by hashes, never by input bytes.
_CACHE: OrderedDict[tuple[object, ...], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple[object, ...], make: Callable[[], T]) -> T:
    """``make()``, remembered under ``key`` among the 48 most recently used."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return cast(T, _CACHE[key])
    value = make()
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > 48:
            _CACHE.popitem(last=False)
    return value
