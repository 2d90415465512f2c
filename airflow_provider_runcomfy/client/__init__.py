"""The RunComfy Model API in plain Python (no Airflow import below this package).

``RunComfyClient`` and ``AsyncRunComfyClient`` submit, poll, fetch results and
cancel; responses are pydantic models; every failure is a ``RunComfyError``.

The errors, the checks and the outcome contract load with the package; the clients,
the response models and the retry policy load on first use (``__getattr__``), so a DAG
file that only builds operators does not pay for what only ``execute`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client._validation import (
    is_loopback_host,
    validate_model_id,
    validate_request_id,
)
from airflow_provider_runcomfy.client.errors import (
    AuthenticationError,
    InputRejectedError,
    InsufficientBalanceError,
    InvalidInputError,
    InvalidModelError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    PermissionDeniedError,
    RateLimitedError,
    RequestNotFoundError,
    RunComfyError,
    ServerError,
    SubmitOutcomeUnknownError,
    TransportError,
    UnexpectedResponseError,
    error_class_for_kind,
)
from airflow_provider_runcomfy.client.outcome import Finality, Outcome, OutcomeKind, finality

if TYPE_CHECKING:
    from airflow_provider_runcomfy.client._base import DEFAULT_BASE_URL, validate_base_url
    from airflow_provider_runcomfy.client._client import AsyncRunComfyClient, RunComfyClient
    from airflow_provider_runcomfy.client.models import (
        CancelResponse,
        ModelInfo,
        RequestResult,
        RequestState,
        RequestStatus,
        SubmitResponse,
    )
    from airflow_provider_runcomfy.client.retry import RetryPolicy

#: Public names loaded on first use -> the module that defines them.
_LAZY = {
    "DEFAULT_BASE_URL": "_base",
    "validate_base_url": "_base",
    "AsyncRunComfyClient": "_client",
    "RunComfyClient": "_client",
    "CancelResponse": "models",
    "ModelInfo": "models",
    "RequestResult": "models",
    "RequestState": "models",
    "RequestStatus": "models",
    "SubmitResponse": "models",
    "RetryPolicy": "retry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncRunComfyClient",
    "AuthenticationError",
    "CancelResponse",
    "Finality",
    "InputRejectedError",
    "InsufficientBalanceError",
    "InvalidInputError",
    "InvalidModelError",
    "JobCancelledError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelInfo",
    "Outcome",
    "OutcomeKind",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestNotFoundError",
    "RequestResult",
    "RequestState",
    "RequestStatus",
    "RetryPolicy",
    "RunComfyClient",
    "RunComfyError",
    "ServerError",
    "SubmitOutcomeUnknownError",
    "SubmitResponse",
    "TransportError",
    "UnexpectedResponseError",
    "error_class_for_kind",
    "finality",
    "is_loopback_host",
    "validate_base_url",
    "validate_model_id",
    "validate_request_id",
]
