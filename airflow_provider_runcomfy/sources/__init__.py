"""Where input files come from: the user's storage or the web, checked before the paid submit.

RunComfy fetches inputs from public https URLs only. ``prepare_input`` turns
a model input that names files in the user's storage (``s3://``, ``gs://``,
local paths, ``ObjectStoragePath``) into one RunComfy can fetch -- a
pre-signed URL, or a ``data:`` URI for storage that cannot sign -- and checks
https inputs with a cheap pre-flight request. See docs/inputs.md.
"""

from airflow_provider_runcomfy.arguments import MAX_SIGN_EXPIRY, PREFLIGHT_MODES
from airflow_provider_runcomfy.sources.errors import InputCheckError, InputSourceError, InputUnreachableError
from airflow_provider_runcomfy.sources.images import SIZE_GUIDES, sniff_image
from airflow_provider_runcomfy.sources.preflight import (
    DEFAULT_PREFLIGHT_TIMEOUT,
    Preflight,
    PreflightMode,
    PreflightResult,
    check_preflight,
)
from airflow_provider_runcomfy.sources.prepare import (
    DEFAULT_SIGN_EXPIRY,
    InputPreparer,
    Prepared,
    PreparedBody,
    PreparedInput,
    check_sign_expiry,
    prepare_input,
    sign_expiry_for,
)
from airflow_provider_runcomfy.sources.storage import (
    StoredInput,
    open_reference,
    prepare_stored,
)

__all__ = [
    "DEFAULT_PREFLIGHT_TIMEOUT",
    "DEFAULT_SIGN_EXPIRY",
    "MAX_SIGN_EXPIRY",
    "PREFLIGHT_MODES",
    "SIZE_GUIDES",
    "InputCheckError",
    "InputPreparer",
    "InputSourceError",
    "InputUnreachableError",
    "Preflight",
    "PreflightMode",
    "PreflightResult",
    "Prepared",
    "PreparedBody",
    "PreparedInput",
    "StoredInput",
    "check_preflight",
    "check_sign_expiry",
    "open_reference",
    "prepare_input",
    "prepare_stored",
    "sign_expiry_for",
    "sniff_image",
]
