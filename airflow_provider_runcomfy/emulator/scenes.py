"""Drawn pictures: the sample inputs under ``/samples/``, and stand-ins for inputs the emulator cannot fetch.

Each scene is a few rectangles, ellipses and polygons placed by a seeded
``random.Random``, so the same seed always gives the same picture and a
person looking at an output can still tell a portrait from a street.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from airflow_provider_runcomfy.emulator.images import Color, Raster, hue_color, mix

Scene = Callable[[Raster, random.Random], None]


def _jitter(rng: random.Random, color: Color, amount: int = 24) -> Color:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in color)
    return r, g, b


def landscape(pic: Raster, rng: random.Random) -> None:
    """Sky, sun, two mountain ranges, a meadow with a lake and a few trees."""
    w, h = pic.width, pic.height
    horizon = h * rng.uniform(0.55, 0.65)
    pic.vgradient(0, horizon + 2, _jitter(rng, (70, 130, 210)), _jitter(rng, (200, 225, 245)))
    pic.ellipse(w * rng.uniform(0.6, 0.85), h * 0.2, min(w, h) * 0.08, min(w, h) * 0.08, (255, 220, 90))
    for depth, base_color in enumerate(((120, 135, 165), (80, 105, 95))):
        points = [(0.0, horizon + 2)]
        peaks = rng.randint(3, 5)
        for i in range(peaks + 1):
            x = w * i / peaks
            points.append((x, horizon - h * rng.uniform(0.12, 0.3) / (depth + 1)))
        points.append((float(w), horizon + 2))
        pic.polygon(points, _jitter(rng, base_color, 12))
    pic.vgradient(horizon, h, _jitter(rng, (95, 160, 70)), _jitter(rng, (45, 110, 40)))
    pic.ellipse(w * rng.uniform(0.25, 0.5), h * 0.82, w * 0.18, h * 0.05, (80, 140, 200))
    for _ in range(rng.randint(3, 6)):
        x, y, size = w * rng.uniform(0.05, 0.95), horizon + h * rng.uniform(0.05, 0.2), h * 0.09
        pic.rect(x - size * 0.08, y, x + size * 0.08, y + size * 0.4, (90, 60, 35))
        pic.polygon(
            [(x - size * 0.4, y + size * 0.05), (x + size * 0.4, y + size * 0.05), (x, y - size)],
            (30, 85, 40),
        )


def street(pic: Raster, rng: random.Random) -> None:
    """A row of buildings with lit windows, a pavement, a road with lane marks and a car."""
    w, h = pic.width, pic.height
    pic.vgradient(0, h * 0.72, _jitter(rng, (120, 170, 220)), _jitter(rng, (225, 210, 190)))
    x = 0.0
    while x < w:
        bw, bh = w * rng.uniform(0.1, 0.2), h * rng.uniform(0.3, 0.62)
        facade = _jitter(rng, rng.choice([(170, 90, 70), (190, 180, 160), (120, 125, 140), (210, 170, 110)]))
        top = h * 0.72 - bh
        pic.rect(x, top, x + bw, h * 0.72, facade)
        win = bw / 7
        for wy in range(int(bh / (win * 2)) - 1):
            for wx in range(3):
                lit = (250, 225, 140) if rng.random() < 0.4 else (60, 70, 95)
                left, upper = x + win * (1 + 2 * wx), top + win * (1 + 2 * wy)
                pic.rect(left, upper, left + win, upper + win * 1.2, lit)
        x += bw + w * 0.01
    pic.rect(0, h * 0.72, w, h * 0.78, (170, 170, 165))
    pic.rect(0, h * 0.78, w, h, (60, 62, 66))
    for i in range(8):
        pic.rect(w * (i / 8 + 0.02), h * 0.885, w * (i / 8 + 0.08), h * 0.9, (235, 235, 225))
    cx, cy = w * rng.uniform(0.25, 0.75), h * 0.84
    body = hue_color(rng.random(), 0.7, 0.8)
    pic.rect(cx - w * 0.09, cy - h * 0.035, cx + w * 0.09, cy + h * 0.025, body)
    pic.rect(cx - w * 0.05, cy - h * 0.07, cx + w * 0.05, cy - h * 0.035, mix(body, (200, 230, 255), 0.6))
    for dx in (-0.055, 0.055):
        pic.ellipse(cx + w * dx, cy + h * 0.028, h * 0.022, h * 0.022, (25, 25, 25))


def portrait(pic: Raster, rng: random.Random) -> None:
    """Head and shoulders: hair, face, eyes, nose and mouth on a soft background."""
    w, h = pic.width, pic.height
    pic.vgradient(0, h, hue_color(rng.random(), 0.25, 0.85), hue_color(rng.random(), 0.35, 0.55))
    skin = _jitter(rng, rng.choice([(240, 200, 170), (200, 150, 110), (150, 100, 70), (225, 180, 140)]), 10)
    hair = _jitter(rng, rng.choice([(40, 30, 25), (120, 80, 40), (200, 170, 100), (90, 40, 30)]), 10)
    cx = w / 2
    pic.ellipse(cx, h * 1.05, w * 0.46, h * 0.3, hue_color(rng.random(), 0.55, 0.6))
    pic.rect(cx - w * 0.07, h * 0.6, cx + w * 0.07, h * 0.8, mix(skin, (0, 0, 0), 0.12))
    pic.ellipse(cx, h * 0.4, w * 0.25, h * 0.27, hair)
    pic.ellipse(cx, h * 0.44, w * 0.19, h * 0.23, skin)
    pic.ellipse(cx, h * 0.26, w * 0.2, h * 0.08, hair)
    for side in (-1, 1):
        ex = cx + side * w * 0.075
        pic.ellipse(ex, h * 0.43, w * 0.035, h * 0.017, (250, 250, 250))
        pic.ellipse(ex, h * 0.43, w * 0.013, h * 0.013, _jitter(rng, (60, 90, 120), 30))
        pic.rect(ex - w * 0.04, h * 0.395, ex + w * 0.04, h * 0.402, hair)
    pic.ellipse(cx, h * 0.485, w * 0.02, h * 0.03, mix(skin, (0, 0, 0), 0.15))
    pic.ellipse(cx, h * 0.55, w * 0.055, h * 0.013, (180, 70, 80))


def product(pic: Raster, rng: random.Random) -> None:
    """A bottle with a cap and a label on a studio backdrop, with its shadow."""
    w, h = pic.width, pic.height
    pic.vgradient(0, h * 0.75, (235, 235, 232), (200, 200, 198))
    pic.vgradient(h * 0.75, h, (215, 213, 210), (245, 244, 240))
    cx, bw = w / 2, w * rng.uniform(0.18, 0.26)
    glass = hue_color(rng.random(), 0.6, 0.55)
    pic.ellipse(cx, h * 0.8, bw * 1.3, h * 0.03, (165, 163, 160))
    pic.rect(cx - bw / 2, h * 0.38, cx + bw / 2, h * 0.8, glass)
    pic.ellipse(cx, h * 0.38, bw / 2, h * 0.06, glass)
    pic.rect(cx - bw * 0.18, h * 0.22, cx + bw * 0.18, h * 0.36, glass)
    pic.rect(cx - bw * 0.22, h * 0.17, cx + bw * 0.22, h * 0.23, _jitter(rng, (40, 40, 45)))
    pic.rect(cx - bw / 2, h * 0.5, cx + bw / 2, h * 0.66, (245, 240, 225))
    pic.rect(cx - bw / 2, h * 0.56, cx + bw / 2, h * 0.59, hue_color(rng.random(), 0.8, 0.85))
    pic.rect(cx - bw * 0.38, h * 0.4, cx - bw * 0.3, h * 0.78, mix(glass, (255, 255, 255), 0.45))


SCENES: dict[str, Scene] = {
    "portrait": portrait,
    "street": street,
    "product": product,
    "landscape": landscape,
}

#: The sample inputs served under ``/samples/``: name -> (width, height).
SAMPLES: dict[str, tuple[int, int]] = {
    "portrait": (384, 512),
    "street": (512, 384),
    "product": (512, 512),
    "landscape": (512, 288),
}


def draw(seed: bytes | str, width: int, height: int, scene: str | None = None) -> Raster:
    """A deterministic picture for ``seed``; the scene is chosen from the seed unless named."""
    rng = random.Random(seed)
    names = sorted(SCENES)
    name = scene or names[rng.randrange(len(names))]
    picture = Raster(width, height)
    SCENES[name](picture, rng)
    return picture


@functools.lru_cache(maxsize=len(SAMPLES))
def sample_png(name: str) -> bytes:
    """The PNG of sample ``name`` (a key of ``SAMPLES``); drawn once per process."""
    width, height = SAMPLES[name]
    return draw(f"sample:{name}", width, height, scene=name).encode()
