"""The RunComfy Model API in plain Python (no Airflow import below this package).

``RunComfyClient`` and ``AsyncRunComfyClient`` submit, poll, fetch results and
cancel; responses are pydantic models; every failure is a ``RunComfyError``.
"""

from airflow_provider_runcomfy.client._base import DEFAULT_BASE_URL, validate_base_url
from airflow_provider_runcomfy.client._client import AsyncRunComfyClient, RunComfyClient
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
)
from airflow_provider_runcomfy.client.models import (
    CancelResponse,
    ModelInfo,
    RequestResult,
    RequestState,
    RequestStatus,
    SubmitResponse,
)
from airflow_provider_runcomfy.client.retry import RetryPolicy

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncRunComfyClient",
    "AuthenticationError",
    "CancelResponse",
    "InputRejectedError",
    "InsufficientBalanceError",
    "InvalidInputError",
    "InvalidModelError",
    "JobCancelledError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelInfo",
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
    "is_loopback_host",
    "validate_base_url",
    "validate_model_id",
    "validate_request_id",
]
