"""Typed inputs of RunComfy models: the plain-Python rules checked before any paid submit.

This package knows nothing of Airflow or HTTP. The operators call
:func:`validate_input` to turn what a DAG author wrote into the request body.
"""

from airflow_provider_runcomfy.models.base import ModelInput
from airflow_provider_runcomfy.models.image_url import (
    MAX_DATA_URI_BYTES,
    MAX_DATA_URI_LENGTH,
    STORAGE_SCHEMES,
    ImageUrl,
    as_reference,
    image_url_problem,
    is_storage_reference,
)
from airflow_provider_runcomfy.models.registry import INPUT_MODELS, validate_input
from airflow_provider_runcomfy.models.seeds import (
    FLUX_KONTEXT_PRO_EDIT,
    NANO_BANANA_EDIT,
    FluxKontextAspectRatio,
    FluxKontextProEditInput,
    NanoBananaAspectRatio,
    NanoBananaEditInput,
    NanoBananaOutputFormat,
)

__all__ = [
    "FLUX_KONTEXT_PRO_EDIT",
    "INPUT_MODELS",
    "MAX_DATA_URI_BYTES",
    "MAX_DATA_URI_LENGTH",
    "NANO_BANANA_EDIT",
    "STORAGE_SCHEMES",
    "FluxKontextAspectRatio",
    "FluxKontextProEditInput",
    "ImageUrl",
    "ModelInput",
    "NanoBananaAspectRatio",
    "NanoBananaEditInput",
    "NanoBananaOutputFormat",
    "as_reference",
    "image_url_problem",
    "is_storage_reference",
    "validate_input",
]
