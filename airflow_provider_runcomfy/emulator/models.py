"""What the emulator knows about models: the two seed models' input schemas, and a catch-all.

The emulator validates the seed models with its own small pydantic models,
written from RunComfy's API pages (runcomfy-api.md), not imported from the
provider: it plays the server, so it must not share the client's mistakes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FLUX_KONTEXT_PRO_EDIT = "blackforestlabs/flux-1-kontext/pro/edit"
NANO_BANANA_EDIT = "google/nano-banana/edit"

_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_ASPECT_RATIO = re.compile(r"(\d{1,3}):(\d{1,3})")

OutputKind = Literal["image", "images", "video", "videos", "none"]


class FluxKontextProEditInput(BaseModel):
    """Input of ``blackforestlabs/flux-1-kontext/pro/edit``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    image_url: str
    seed: int | None = None
    aspect_ratio: Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"] | None = None


class NanoBananaEditInput(BaseModel):
    """Input of ``google/nano-banana/edit``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(max_length=1000)
    image_urls: list[str] = Field(min_length=1, max_length=10)
    aspect_ratio: (
        Literal["auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"] | None
    ) = None
    output_format: Literal["jpeg", "png", "webp"] | None = None
    num_images: int | None = Field(default=None, ge=1, le=4)


@dataclass(frozen=True)
class ModelSpec:
    """One model as the emulator sees it: how to check its input and what its output looks like."""

    model_id: str
    name: str
    input_model: type[BaseModel] | None
    output_kind: OutputKind
    default_aspect_ratio: str | None


SEED_MODELS: dict[str, ModelSpec] = {
    FLUX_KONTEXT_PRO_EDIT: ModelSpec(
        FLUX_KONTEXT_PRO_EDIT, "FLUX.1 Kontext [pro] Edit", FluxKontextProEditInput, "image", "16:9"
    ),
    NANO_BANANA_EDIT: ModelSpec(NANO_BANANA_EDIT, "Nano Banana Edit", NanoBananaEditInput, "images", "auto"),
}


def is_valid_model_id(model_id: str) -> bool:
    """Whether ``model_id`` has the shape of a RunComfy model id: ``/``-separated ``[A-Za-z0-9._-]``."""
    segments = model_id.split("/")
    return bool(model_id) and all(_MODEL_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)


def spec_for(model_id: str) -> ModelSpec:
    """The seed model's spec, or a generic one: any other model accepts any JSON object."""
    return SEED_MODELS.get(model_id) or ModelSpec(model_id, model_id, None, "image", None)


class InputSchemaError(ValueError):
    """The input does not match the model's schema; ``detail`` lists the fields, FastAPI-style."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(detail)} input error(s)")
        self.detail = detail


def validate_input(spec: ModelSpec, payload: Any) -> dict[str, Any]:
    """Check ``payload`` against the model's schema and return it with unset optional fields dropped."""
    if not isinstance(payload, dict):
        raise InputSchemaError(
            [{"loc": ["body"], "msg": "the request body must be a JSON object", "type": "dict_type"}]
        )
    if spec.input_model is None:
        return payload
    try:
        spec.input_model.model_validate(payload)
    except ValidationError as exc:
        raise InputSchemaError(
            [
                {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None
    return {key: value for key, value in payload.items() if value is not None}


def parse_aspect_ratio(value: object) -> tuple[int, int] | None:
    """``"16:9"`` -> ``(16, 9)``; anything else (``"auto"``, ``None``, garbage) -> ``None``."""
    if isinstance(value, str) and (match := _ASPECT_RATIO.fullmatch(value)):
        width, height = int(match.group(1)), int(match.group(2))
        if width and height:
            return width, height
    return None


def image_url_fields(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The input images of a job as ``(field label, url)``: ``image_url``, ``image_urls[1]``, ...

    For models the emulator does not know, every top-level ``*_url`` string
    and ``*_urls`` list counts, so a video model's ``video_url`` on a
    ``.invalid`` host fails the same way an image would.
    """
    found: list[tuple[str, str]] = []
    for key, value in payload.items():
        if key.endswith("_url") and isinstance(value, str):
            found.append((key, value))
        elif key.endswith("_urls") and isinstance(value, list):
            found.extend((f"{key}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
    return found
