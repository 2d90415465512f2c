"""What an input file is, from its first bytes, and how large RunComfy takes it.

RunComfy's guides: an image up to 50 MB (about 4K), a video up to 100 MB; a
``data:`` URI up to about 6 MiB (``MAX_DATA_URI_BYTES``). The type of a file
in storage is read from its magic bytes, not from its name or from the
``Content-Type`` its store keeps (S3 says ``binary/octet-stream`` for
anything uploaded without one).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from airflow_provider_runcomfy.models.image_url import MAX_DATA_URI_BYTES

#: Keys under which RunComfy models take their input pictures (the seed models' and common others').
INPUT_IMAGE_KEYS = ("image_url", "image_urls", "image", "images", "input_image", "reference_image")

#: What an input field holds, from its name: the checks differ (type, size guide).
InputKind = Literal["image", "video", "audio", "file"]

#: RunComfy's size guides in bytes. "50 MB" is read as MiB, the larger reading, so that
#: nothing within either reading is refused; a file over it would most likely fail the job.
SIZE_GUIDES: dict[str, int] = {
    "image": 50 * 1024 * 1024,
    "video": 100 * 1024 * 1024,
    "audio": 100 * 1024 * 1024,
    "file": 100 * 1024 * 1024,
}

#: How many leading bytes identify a type (WebP needs 12).
MAGIC_LENGTH = 16

#: The image types RunComfy's image models take, as media type -> data-URI subtype.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

__all__ = [
    "IMAGE_TYPES",
    "MAGIC_LENGTH",
    "MAX_DATA_URI_BYTES",
    "SIZE_GUIDES",
    "InputKind",
    "data_uri",
    "describe_size",
    "kind_of_field",
    "sniff_image",
]


def sniff_image(head: bytes) -> str | None:
    """The media type of a PNG, JPEG or WebP file from its first bytes; ``None`` for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_uri(media_type: str, data: bytes) -> str:
    """``data:<media_type>;base64,<data>``, the form RunComfy accepts."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def kind_of_field(name: str) -> InputKind:
    """What a field of a model we have no schema for holds, by its name (``mask_image_url`` -> image)."""
    lowered = name.lower()
    for kind in ("image", "video", "audio"):
        if kind in lowered:
            return kind
    if "mask" in lowered:
        return "image"
    return "file"


def describe_size(size: int) -> str:
    """``1.2 MB`` / ``340 kB`` / ``12 bytes``, for log lines and errors."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1_000:
        return f"{size / 1_000:.0f} kB"
    return f"{size} bytes"


def input_images(fields: Mapping[str, Any]) -> list[str]:
    """The input pictures (URLs, ``data:`` URIs or storage paths) named in an operator's fields.

    Looks at the typed operators' ``image_url``/``image_urls`` and at any model's ``input``
    dict; keeps the order and drops duplicates.
    """
    found: list[str] = []
    sources: list[Mapping[str, Any]] = [fields]
    if isinstance(fields.get("input"), Mapping):
        sources.append(fields["input"])
    for source in sources:
        for key in INPUT_IMAGE_KEYS:
            value = source.get(key)
            values = value if isinstance(value, list | tuple) else [value]
            for v in values:
                if isinstance(v, str) and v.strip() and v not in found:
                    found.append(v)
    return found
