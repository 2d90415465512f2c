"""The errors of the RunComfy client: a short hierarchy whose messages say what to do.

Every error a user can meet is a ``RunComfyError``. The subclasses are chosen by
what the caller should do next (fix the input, fix the token, top up, wait,
retry later), not by HTTP status, so an operator can decide on retries with
one ``isinstance`` and show the message as it is.
"""

from __future__ import annotations


class RunComfyError(Exception):
    """Base of every error raised by this provider's client.

    :param message: what happened and what to do about it; never contains the token.
    :param error_code: RunComfy's numeric ``error_code`` when the API sent one.
    :param status_code: the HTTP status when there was a response.
    :param request_id: the RunComfy request concerned, when known.
    :param retry_after: RunComfy's ``Retry-After`` hint in seconds, when it gave one.
    """

    #: Whether the same call may succeed if repeated later (rate limit, outage).
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        error_code: int | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, "
            f"error_code={self.error_code!r}, status_code={self.status_code!r})"
        )


class InvalidInputError(RunComfyError, ValueError):
    """The inputs, model id or request id are invalid; raised before any HTTP request."""


class InvalidModelError(RunComfyError):
    """RunComfy does not know the model id (error 400001)."""


class AuthenticationError(RunComfyError):
    """The token is missing, expired, revoked, or belongs to an inactive account (400004, 401)."""


class PermissionDeniedError(RunComfyError):
    """The request belongs to another RunComfy user (403001, 403)."""


class InsufficientBalanceError(RunComfyError):
    """The RunComfy account has no balance left (400002)."""


class RequestNotFoundError(RunComfyError):
    """The request id is unknown to RunComfy, or its results have expired (404001)."""


class InputRejectedError(RunComfyError):
    """RunComfy rejected the inputs against the model's schema (422001); ``detail`` says where."""

    def __init__(self, message: str, *, detail: object = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.detail = detail


class RateLimitedError(RunComfyError):
    """RunComfy answered 429; ``retry_after`` is its hint in seconds, when it gave one."""

    retryable = True


class ServerError(RunComfyError):
    """RunComfy failed on its side (5xx, 500001); reads may be retried."""

    retryable = True


class TransportError(RunComfyError):
    """The request did not complete: connection refused, reset, or timed out.

    ``request_sent`` is False only when the connection was never made, which is
    the one transport failure after which a submit can safely be repeated.
    """

    retryable = True

    def __init__(self, message: str, *, request_sent: bool = True, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.request_sent = request_sent


class SubmitOutcomeUnknownError(RunComfyError):
    """A submit reached RunComfy but its answer was lost: the job may exist and be billed.

    Never retried automatically, because RunComfy has no idempotency key: a
    second submit could pay for the same image twice.
    """


class UnexpectedResponseError(RunComfyError):
    """RunComfy answered with a body this client cannot read."""


class JobFailedError(RunComfyError):
    """The job ran and RunComfy reports it failed; ``message`` carries RunComfy's reason."""


class JobCancelledError(RunComfyError):
    """The job was cancelled before it ran."""


class JobTimeoutError(RunComfyError):
    """The job did not finish before the caller's deadline."""
