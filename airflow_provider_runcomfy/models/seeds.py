"""Typed inputs of the two seed models, field for field as in their RunComfy API schemas.

Optional fields default to ``None`` rather than to RunComfy's documented default:
``None`` is not sent (see :meth:`ModelInput.to_payload`), so RunComfy applies
its own default, and this code cannot drift from it.

Integers are strict: ``True`` or ``1.5`` is a mistake, not a seed of 1.
Strings are strict too: bytes are not silently decoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt, StrictStr

from airflow_provider_runcomfy.models.base import ModelInput
from airflow_provider_runcomfy.models.image_url import ImageUrl

FLUX_KONTEXT_PRO_EDIT = "blackforestlabs/flux-1-kontext/pro/edit"
NANO_BANANA_EDIT = "google/nano-banana/edit"

FluxKontextAspectRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
NanoBananaAspectRatio = Literal[
    "auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"
]
NanoBananaOutputFormat = Literal["jpeg", "png", "webp"]


class FluxKontextProEditInput(ModelInput):
    """Inputs of ``blackforestlabs/flux-1-kontext/pro/edit``: edit one image following a prompt.

    :param prompt: the edit to make. Required here although the schema gives a
        default of ``""``: a job without a prompt is almost surely a mistake in the
        DAG, but an empty string, which the schema allows, is still accepted.
    :param image_url: the image to edit (see :data:`ImageUrl` for what is accepted: a URL, or
        a file in your storage that is signed or inlined when the task runs).
    :param seed: any integer, for a reproducible result; RunComfy picks one when unset.
    :param aspect_ratio: of the output, W:H; RunComfy's default is ``16:9``.
    """

    model_id = FLUX_KONTEXT_PRO_EDIT
    image_fields = ("image_url",)

    prompt: StrictStr = Field(description="The edit to make.")
    image_url: ImageUrl = Field(description="The image to edit.")
    seed: StrictInt | None = Field(default=None, description="Seed for a reproducible result.")
    aspect_ratio: FluxKontextAspectRatio | None = Field(
        default=None, description="Aspect ratio (W:H) of the output; RunComfy's default is 16:9."
    )


class NanoBananaEditInput(ModelInput):
    """Inputs of ``google/nano-banana/edit``: edit or combine up to 10 images following a prompt.

    :param prompt: the edit to make, at most 1000 characters.
    :param image_urls: 1 to 10 images of scene elements (characters, objects, locations).
    :param aspect_ratio: of the output, W:H, or ``auto`` (RunComfy's default).
    :param output_format: ``jpeg``, ``png`` (RunComfy's default) or ``webp``.
    :param num_images: how many images to generate, 1 to 4; RunComfy's default is 1.
    """

    model_id = NANO_BANANA_EDIT
    image_fields = ("image_urls",)

    prompt: StrictStr = Field(max_length=1000, description="The edit to make.")
    image_urls: Annotated[list[ImageUrl], Field(min_length=1, max_length=10)] = Field(
        description="Up to 10 images of scene elements, such as characters, objects, and locations."
    )
    aspect_ratio: NanoBananaAspectRatio | None = Field(
        default=None, description="Aspect ratio (W:H) of the output; RunComfy's default is auto."
    )
    output_format: NanoBananaOutputFormat | None = Field(
        default=None, description="Image format of the output; RunComfy's default is png."
    )
    num_images: StrictInt | None = Field(
        default=None, ge=1, le=4, description="Number of images to generate; RunComfy's default is 1."
    )
