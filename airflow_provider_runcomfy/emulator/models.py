"""The emulator's model catalog: input schemas and prices, and a catch-all for any other model.

The seed models' inputs are the emulator's own small pydantic models,
written from RunComfy's API pages (runcomfy-api.md), not imported from
the provider: it plays the server, so it must not share the client's
mistakes. ``GET /v1/models/{id}`` serves their JSON Schema, so what the
emulator validates and what it publishes are one definition.

The other catalog entries and every price are **emulator fixtures**:
plausible, documented in docs/emulator.md, not RunComfy's price list.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from pydantic.json_schema import SkipJsonSchema

from airflow_provider_runcomfy.emulator.faults import OutputKind

FLUX_KONTEXT_PRO_EDIT = "blackforestlabs/flux-1-kontext/pro/edit"
NANO_BANANA_EDIT = "google/nano-banana/edit"
FLUX_KONTEXT_MAX_EDIT = "blackforestlabs/flux-1-kontext/max/edit"
WAN_IMAGE_TO_VIDEO = "wan-ai/wan-2-2/image-to-video"
IMAGE_UPSCALE = "runcomfy/image-upscale"
#: A model whose published schema is hostile: a nested-quantifier pattern (exponential in Python's
#: ``re``), the same as ``patternProperties``, and a lookahead no linear-time engine runs.
HOSTILE_PATTERN_EDIT = "acme/hostile-pattern/edit"
#: The nested-quantifier pattern, published as is (RunComfy's answer is not trusted).
HOSTILE_PATTERN = r"^(\w+\s?)*$"
#: A pattern with a lookahead: valid JSON Schema, but RE2 cannot run it.
LOOKAHEAD_PATTERN = r"^(?!forbidden).*$"

PriceUnit = Literal["image", "second", "request"]

_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_ASPECT_RATIO = re.compile(r"(\d{1,3}):(\d{1,3})")
_URL: dict[str, JsonValue] = {"format": "uri"}


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


#: An optional integer with no default, published as plain ``{"type": "integer"}``.
OptionalInt = int | SkipJsonSchema[None]
_OPTIONAL = Field(default=None, json_schema_extra=_no_default)


class _Input(BaseModel):
    # Strict and closed, like the published schemas (additionalProperties: false).
    model_config = ConfigDict(extra="forbid", strict=True)


class FluxKontextProEditInput(_Input):
    """Input of ``blackforestlabs/flux-1-kontext/pro/edit`` (and ``.../max/edit``)."""

    prompt: str
    image_url: str = Field(json_schema_extra=_URL)
    seed: OptionalInt = _OPTIONAL
    aspect_ratio: Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"] = "16:9"


class NanoBananaEditInput(_Input):
    """Input of ``google/nano-banana/edit``."""

    prompt: str = Field(max_length=1000)
    image_urls: list[str] = Field(
        min_length=1, max_length=10, json_schema_extra={"items": {"type": "string", **_URL}}
    )
    aspect_ratio: Literal["auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"] = (
        "auto"
    )
    output_format: Literal["jpeg", "png", "webp"] = "png"
    num_images: int = Field(default=1, ge=1, le=4)


class WanImageToVideoInput(_Input):
    """Input of the emulator's video model fixture ``wan-ai/wan-2-2/image-to-video``."""

    prompt: str = Field(max_length=2000)
    image_url: str = Field(json_schema_extra=_URL)
    duration: Literal[5, 10] = 5
    resolution: Literal["480p", "720p"] = "480p"
    seed: OptionalInt = _OPTIONAL


class ImageUpscaleInput(_Input):
    """Input of the emulator's request-priced fixture ``runcomfy/image-upscale``."""

    image_url: str = Field(json_schema_extra=_URL)
    scale: Literal[2, 4] = 2


class HostilePatternInput(_Input):
    """Input of ``acme/hostile-pattern/edit``: its patterns are published, not applied by the emulator."""

    prompt: str = Field(max_length=1000, json_schema_extra={"pattern": HOSTILE_PATTERN})
    image_url: str = Field(json_schema_extra=_URL)
    style: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra={"pattern": LOOKAHEAD_PATTERN})
    tags: dict[str, str] | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra={
            "patternProperties": {HOSTILE_PATTERN: {"type": "string"}},
            "additionalProperties": False,
        },
    )


@dataclass(frozen=True)
class ModelSpec:
    """One model as the emulator sees it: its input, its output, its price (``None``: not in the catalog)."""

    model_id: str
    name: str
    input_model: type[BaseModel] | None
    output_kind: OutputKind
    default_aspect_ratio: str | None
    base_price_usd: float | None = None
    price_unit: PriceUnit | None = None
    pricing_note: str | None = None

    @property
    def in_catalog(self) -> bool:
        """Whether the emulator publishes a schema and a price for this model."""
        return self.input_model is not None

    def units(self, payload: dict[str, Any]) -> float:
        """How many ``price_unit`` a job with this (valid) input is billed for."""
        if self.price_unit == "image":
            count = payload.get("num_images", 1)
            return float(count if isinstance(count, int) else 1)
        if self.price_unit == "second":
            seconds = payload.get("duration", 5)
            return float(seconds if isinstance(seconds, int | float) else 5)
        return 1.0


SEED_MODELS: dict[str, ModelSpec] = {
    FLUX_KONTEXT_PRO_EDIT: ModelSpec(
        FLUX_KONTEXT_PRO_EDIT,
        "FLUX.1 Kontext [pro] Edit",
        FluxKontextProEditInput,
        "image",
        "16:9",
        0.04,
        "image",
        "$0.04 per output image (emulator fixture)",
    ),
    NANO_BANANA_EDIT: ModelSpec(
        NANO_BANANA_EDIT,
        "Nano Banana Edit",
        NanoBananaEditInput,
        "images",
        "auto",
        0.039,
        "image",
        "$0.039 per output image, num_images of them (emulator fixture)",
    ),
}

CATALOG: dict[str, ModelSpec] = {
    **SEED_MODELS,
    FLUX_KONTEXT_MAX_EDIT: ModelSpec(
        FLUX_KONTEXT_MAX_EDIT,
        "FLUX.1 Kontext [max] Edit",
        FluxKontextProEditInput,
        "image",
        "16:9",
        0.08,
        "image",
        "$0.08 per output image (emulator fixture)",
    ),
    WAN_IMAGE_TO_VIDEO: ModelSpec(
        WAN_IMAGE_TO_VIDEO,
        "Wan 2.2 Image to Video",
        WanImageToVideoInput,
        "video",
        "16:9",
        0.05,
        "second",
        "$0.05 per second of video, `duration` seconds (emulator fixture)",
    ),
    IMAGE_UPSCALE: ModelSpec(
        IMAGE_UPSCALE,
        "Image Upscale",
        ImageUpscaleInput,
        "image",
        None,
        0.01,
        "request",
        "$0.01 per request (emulator fixture)",
    ),
    HOSTILE_PATTERN_EDIT: ModelSpec(
        HOSTILE_PATTERN_EDIT,
        "Hostile Pattern Edit",
        HostilePatternInput,
        "image",
        None,
        0.01,
        "request",
        "$0.01 per request (emulator fixture with hostile published patterns)",
    ),
}


def is_valid_model_id(model_id: str) -> bool:
    """Whether ``model_id`` has the shape of a RunComfy model id: ``/``-separated ``[A-Za-z0-9._-]``."""
    segments = model_id.split("/")
    return bool(model_id) and all(_MODEL_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)


def spec_for(model_id: str) -> ModelSpec:
    """The catalog's spec, or a generic one: any other model accepts any JSON object and has no price."""
    return CATALOG.get(model_id) or ModelSpec(model_id, model_id, None, "image", None)


@functools.cache
def input_schema(input_model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema the emulator publishes for ``input_model`` (computed once)."""
    return input_model.model_json_schema()


def model_info(spec: ModelSpec, price_override: float | None) -> dict[str, Any]:
    """``GET /v1/models/{id}``: name, schema and price; only ``model_id`` and ``name`` off the catalog."""
    info: dict[str, Any] = {"model_id": spec.model_id, "name": spec.name}
    if spec.input_model is not None:
        info["input_schema"] = input_schema(spec.input_model)
        info["base_price_usd"] = spec.base_price_usd if price_override is None else price_override
        info["price_unit"] = spec.price_unit
        info["pricing_note"] = spec.pricing_note
    return info


class InputSchemaError(ValueError):
    """The input does not match the model's schema; ``detail`` lists the fields, FastAPI-style."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(detail)} input error(s)")
        self.detail = detail


def validate_input(spec: ModelSpec, payload: Any) -> dict[str, Any]:
    """Check ``payload`` against the model's schema and return it with ``null`` fields dropped.

    An explicit ``null`` counts as "not given" (the field's default applies), as lenient
    servers do; the published schema lists the defaults.
    """
    if not isinstance(payload, dict):
        raise InputSchemaError(
            [{"loc": ["body"], "msg": "the request body must be a JSON object", "type": "dict_type"}]
        )
    if spec.input_model is None:
        return payload
    given = {key: value for key, value in payload.items() if value is not None}
    try:
        spec.input_model.model_validate(given)
    except ValidationError as exc:
        raise InputSchemaError(
            [
                {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
        ) from None
    return given


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
