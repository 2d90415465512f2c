"""The errors of the RunComfy client: a short hierarchy whose messages say what to do.

Every error a user can meet is a ``RunComfyError``. The subclasses are chosen by
what the caller should do next (fix the input, fix the token, top up, wait,
retry later), not by HTTP status, so an operator can decide on retries with
one ``isinstance`` and show the message as it is.

Each class has a ``kind`` (its name unless it says otherwise), registered when the class
is defined: an error crosses the trigger boundary as its kind and comes back as the same
class through ``error_class_for_kind``. A class appended to this module registers itself.
"""

from __future__ import annotations

from typing import ClassVar

from airflow_provider_runcomfy.client.redact import redact_text, redact_value

#: kind -> class, filled by ``RunComfyError.__init_subclass__``.
_KINDS: dict[str, type[RunComfyError]] = {}


def error_class_for_kind(kind: object) -> type[RunComfyError]:
    """The error class registered as ``kind``; ``RunComfyError`` for a kind this version does not know."""
    return _KINDS.get(kind, RunComfyError) if isinstance(kind, str) else RunComfyError


class RunComfyError(Exception):
    """Base of every error raised by this provider's client.

    :param message: what happened and what to do about it; never contains the token, and
        credentials quoted in it (a pre-signed URL's signature) are redacted on the way in.
    :param error_code: RunComfy's numeric ``error_code`` when the API sent one.
    :param status_code: the HTTP status when there was a response.
    :param request_id: the RunComfy request concerned, when known.
    :param retry_after: RunComfy's ``Retry-After`` hint in seconds, when it gave one.
    """

    #: Whether the same call may succeed if repeated later (rate limit, outage).
    retryable: bool = False

    #: The name this class travels under (trigger events); its class name unless set.
    kind: ClassVar[str] = "RunComfyError"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__name__
        # The first class to claim a kind keeps it: a same-named subclass elsewhere (a test's,
        # a user's) must not change what an event's kind turns back into.
        _KINDS.setdefault(cls.kind, cls)

    def __init__(
        self,
        message: str,
        *,
        error_code: int | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Every error text is redacted here, where it is built: a RunComfy text can quote a
        # pre-signed URL, and a message goes on to logs, events, XCom, the ledger and the UI.
        message = redact_text(message)
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


_KINDS[RunComfyError.kind] = RunComfyError


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
        self.detail = redact_value(detail)


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

    #: What was sent, so the job can be found: the model, when (UTC, ISO 8601) and the
    #: ``input_fingerprint`` of its input. Set by the client; None on an error built elsewhere.
    model_id: str | None = None
    submitted_at: str | None = None
    input_fingerprint: str | None = None


class UnexpectedResponseError(RunComfyError):
    """RunComfy answered with a body this client cannot read."""


class JobFailedError(RunComfyError):
    """The job ran and RunComfy reports it failed; ``message`` carries RunComfy's reason."""


class JobCancelledError(RunComfyError):
    """The job was cancelled before it ran."""


class JobTimeoutError(RunComfyError):
    """The job did not finish before the caller's deadline."""


class OutputStorageError(RunComfyError):
    """``output_dir`` cannot be written: refused before the submit, or the copies failed after the job.

    Not retried by the client: a read-only or unreachable store rarely heals in seconds. The
    message names the directory and, after a job, that a retry re-attaches without paying again.
    """


class OutputDownloadError(RunComfyError):
    """An output file could not be copied. Not retryable unless a subclass says so."""


class OutputURLRejectedError(OutputDownloadError):
    """The URL (or a redirect) breaks the URL policy (``check_fetch_url``): scheme, credentials, address."""


class MalformedURLError(OutputURLRejectedError):
    """The URL (or a redirect's) does not parse: refused by the URL policy before any connection."""


class OutputTooLargeError(OutputDownloadError):
    """The output file is larger than ``max_output_bytes``."""


class OutputContentTypeError(OutputDownloadError):
    """The output URL answered with something that is not an image or a video (e.g. an HTML error page)."""


class OutputUnavailableError(OutputDownloadError):
    """The output URL answered 403, 404 or 410: it has most likely expired."""


class OutputTransferError(OutputDownloadError):
    """The transfer broke off (connection cut, timeout, truncated body, 429 or 5xx): worth another try."""

    retryable = True


class OutputTimeoutError(OutputTransferError):
    """The download did not finish within its overall deadline (``max_seconds``)."""
