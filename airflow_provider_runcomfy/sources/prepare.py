"""The one entry point: a validated model input in, the payload to send and the one to record out.

``prepare_input(model_id, payload)`` looks at every input file of a model's
input (the seed models' image fields; for other models, fields whose values
are storage paths, or URLs):

| the user gave | what is sent | what is recorded |
|---|---|---|
| ``s3://``, ``gs://``, ``abfs://`` path (storage that signs) | a pre-signed URL, valid ``sign_expiry`` s | the path |
| a local path, ``file://``, ``memory://`` (no signing) | a ``data:`` URI (at most 6 MiB of file) | the path |
| an ``https://`` URL | the URL, after its pre-flight | the URL |
| a ``data:`` URI | the URI | the URI |

"Recorded" is what may appear in XCom, the batch manifest, the retry
fingerprint and logs: a pre-signed URL is a credential, so it is only ever
sent, and it is handed to Airflow's secrets masker (``mask_secret``) before
anything could log it.

Everything here happens before the submit: a missing file, a 404, a web page
where a picture should be, or an oversized file fails the task (or the batch
item) before anything is paid for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_runcomfy.arguments import MAX_SIGN_EXPIRY, check_sign_expiry
from airflow_provider_runcomfy.client.closing import Closing
from airflow_provider_runcomfy.client.download import shown_url
from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.client.redact import credential_values
from airflow_provider_runcomfy.models.image_url import as_references
from airflow_provider_runcomfy.sources.fields import Target, find_targets
from airflow_provider_runcomfy.sources.images import describe_size
from airflow_provider_runcomfy.sources.preflight import (
    DEFAULT_PREFLIGHT_TIMEOUT,
    Preflight,
    PreflightMode,
    check_preflight,
)
from airflow_provider_runcomfy.sources.storage import prepare_stored

log = logging.getLogger(__name__)

#: Expiry of a pre-signed URL when the task has no timeout: a day covers any queue RunComfy has had.
DEFAULT_SIGN_EXPIRY = 24 * 3600

#: Added to the task's ``timeout`` for the expiry: RunComfy fetches inputs when the job starts,
#: which is before the timeout, or the job is cancelled.
SIGN_EXPIRY_MARGIN = 15 * 60

_MIN_MASKED_LENGTH = 6


@dataclass(frozen=True)
class PreparedInput:
    """How one input file was prepared, for the task log (never holds a pre-signed URL).

    :param field: its place in the input, e.g. ``image_urls[1]``.
    :param given: what the user gave (a URL shown without its query).
    :param how: ``signed``, ``inlined``, ``checked``, ``not checked`` or ``sent as is``.
    :param detail: what was found, e.g. ``image/png, 1.2 MB``.
    :param seconds: the time it took (storage look-up or pre-flight).
    """

    field: str
    given: str
    how: str
    detail: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        return f"{self.field}: {self.given} {self.how}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Prepared:
    """A model input ready to submit.

    :param payload_to_send: the request body: storage paths replaced by pre-signed URLs or data URIs.
    :param payload_to_record: the input as the user gave it (paths, not URLs): for XCom, the
        manifest, the retry fingerprint and logs.
    :param secrets_to_mask: the pre-signed URLs (and their signatures), already given to the masker.
    :param inputs: what was done to each input file.
    """

    payload_to_send: dict[str, Any]
    payload_to_record: dict[str, Any]
    secrets_to_mask: tuple[str, ...] = ()
    inputs: tuple[PreparedInput, ...] = field(default=())


#: One batch item's request body (``Prepared.payload_to_send``), or the error that makes the item
#: invalid: what a batch's submit step takes. Named here, beside what produces it, so that the
#: batch's reading of inputs (``batch.items``) and its submitting (``batch.submitting``) share it
#: without importing each other.
PreparedBody = dict[str, Any] | RunComfyError


def sign_expiry_for(timeout: float | timedelta | None) -> int:
    """The pre-signed URL expiry for a task waiting at most ``timeout``: that plus a margin, or a day."""
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    if not timeout:
        return DEFAULT_SIGN_EXPIRY
    return min(int(timeout) + SIGN_EXPIRY_MARGIN, MAX_SIGN_EXPIRY)


def prepare_input(
    model_id: str,
    payload: Mapping[str, Any],
    *,
    preflight: PreflightMode = "warn",
    sign_expiry: int | timedelta | None = None,
    api_base_url: str | None = None,
    preflight_timeout: float = DEFAULT_PREFLIGHT_TIMEOUT,
    logger: logging.Logger | logging.LoggerAdapter[Any] | Any = None,
    mask: Callable[[str], None] | None = None,
) -> Prepared:
    """Prepare one validated input of ``model_id`` for the submit (see the module docstring).

    :param preflight: ``warn`` (default: check https inputs; the worker not reaching a host is a
        warning), ``strict`` (that is an error too) or ``off`` (send https inputs unchecked).
    :param sign_expiry: seconds (or a ``timedelta``) a pre-signed URL stays valid; None: a day
        (operators pass ``sign_expiry_for(timeout)``).
    :param api_base_url: the RunComfy API's base URL (``hook.client.base_url``); None: RunComfy's
        own. Pre-flight requests reach loopback and private hosts only when the API is on loopback.
    :param preflight_timeout: seconds for each pre-flight request.
    :param logger: where to say what was done with each input (the task's log).
    :param mask: registers a secret with the log masker; Airflow's ``mask_secret`` by default.
    :raises InvalidInputError: an input file cannot be sent (``InputSourceError``) or failed its
        pre-flight (``InputCheckError``), naming the field and the path or URL.
    """
    with InputPreparer(
        preflight=preflight,
        sign_expiry=sign_expiry,
        api_base_url=api_base_url,
        preflight_timeout=preflight_timeout,
        logger=logger,
        mask=mask,
    ) as preparer:
        return preparer.prepare(model_id, payload)


class InputPreparer(Closing):
    """Prepares inputs with one pre-flight client and a bounded pool; for a batch of many inputs.

    ``prepare`` handles one input (its files concurrently); ``prepare_many`` handles many, at most
    ``max_concurrency`` at a time, and returns each item's ``Prepared`` or its error. Thread-safe.
    Arguments as for ``prepare_input``, and:

    :param max_concurrency: files checked (and URLs pre-flighted) at once.
    :param check_only: check every input as for a submit but sign and read nothing:
        ``payload_to_send`` is then the input as given. A batch checks all its items this way
        first and prepares each for real just before its submit, so a signature is always fresh.
    """

    def __init__(
        self,
        *,
        preflight: PreflightMode = "warn",
        sign_expiry: int | timedelta | None = None,
        api_base_url: str | None = None,
        preflight_timeout: float = DEFAULT_PREFLIGHT_TIMEOUT,
        max_concurrency: int = 8,
        check_only: bool = False,
        logger: logging.Logger | logging.LoggerAdapter[Any] | Any = None,
        mask: Callable[[str], None] | None = None,
    ) -> None:
        self.check_only = check_only
        self.preflight_mode = check_preflight(preflight)
        self.sign_expiry = check_sign_expiry(sign_expiry) or DEFAULT_SIGN_EXPIRY
        self.max_concurrency = max(1, int(max_concurrency))
        self.log = logger or log
        self.mask = mask if mask is not None else _airflow_mask
        self.api_base_url = api_base_url
        self.preflight_timeout = preflight_timeout
        self._preflight: Preflight | None = (
            None  # made at the first https input (an SSL context costs ~20 ms)
        )
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="runcomfy-inputs"
        )

    def close(self) -> None:
        """Close the pre-flight connections and the pool."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._preflight is not None:
            self._preflight.close()

    def prepare(self, model_id: str, payload: Mapping[str, Any]) -> Prepared:
        """One input, its files prepared concurrently (see ``prepare_input``)."""
        return self._prepare(model_id, payload, concurrent=True)

    def prepare_many(
        self, model_id: str, payloads: Sequence[Mapping[str, Any]]
    ) -> list[Prepared | InvalidInputError]:
        """Many inputs of one model, at most ``max_concurrency`` at a time, in order.

        A bad item's entry is its ``InvalidInputError`` (to report like any invalid item);
        the others are unaffected.
        """

        def one(payload: Mapping[str, Any]) -> Prepared | InvalidInputError:
            try:
                return self._prepare(model_id, payload, concurrent=False, level=logging.DEBUG)
            except InvalidInputError as error:
                return error

        results = list(self._pool.map(one, payloads))
        if results:
            counts: dict[str, int] = {}
            unchecked: list[PreparedInput] = []
            for result in results:
                if isinstance(result, InvalidInputError):
                    hows = ["invalid"]
                else:
                    hows = [report.how for report in result.inputs]
                    unchecked += [report for report in result.inputs if report.how == "not checked"]
                for how in hows:
                    counts[how] = counts.get(how, 0) + 1
            # Nothing done to any input (sent as given): a line per submit wave would only be noise.
            level = logging.DEBUG if set(counts) <= {"sent as is"} else logging.INFO
            self.log.log(
                level,
                "%s %d RunComfy input(s): %s.",
                "Checked" if self.check_only else "Prepared",
                len(results),
                ", ".join(f"{n} {how}" for how, n in sorted(counts.items())) or "no files among them",
            )
            if unchecked:
                _warn_unchecked(self.log, len(unchecked), unchecked[0])
        return results

    # -- one input -------------------------------------------------------------------------------

    def _prepare(
        self, model_id: str, payload: Mapping[str, Any], *, concurrent: bool, level: int = logging.INFO
    ) -> Prepared:
        record = {key: as_references(value) for key, value in payload.items()}
        send = {key: list(value) if isinstance(value, list) else value for key, value in record.items()}
        targets = list(find_targets(model_id, record))
        if concurrent and len(targets) > 1:
            done = list(self._pool.map(self._one, targets))
        else:
            done = [self._one(target) for target in targets]
        secrets: list[str] = []
        for target, (value, _, secret) in zip(targets, done, strict=True):
            if target.index is None:
                send[target.key] = value
            else:
                send[target.key][target.index] = value
            if secret:  # masked before anything is logged
                secrets.extend(self._mask_url(secret))
        reports = tuple(report for _, report, _ in done)
        for report in reports:
            self.log.log(level, "RunComfy input %s", report.describe())
            if report.how == "not checked" and level > logging.DEBUG:  # many inputs: one line for all
                _warn_unchecked(self.log, 1, report)
        return Prepared(send, record, tuple(secrets), reports)

    def _one(self, target: Target) -> tuple[str, PreparedInput, str | None]:
        """(what to send, what was done, the secret to mask) for one input file."""
        value = target.value
        if target.source == "stored":
            stored = prepare_stored(
                target.label, value, target.kind, expiry=self.sign_expiry, check_only=self.check_only
            )
            found = f"{stored.media_type or target.kind}, {describe_size(stored.size)}"
            if self.check_only:
                how, detail = "checked", f"{found}; {stored.how} when submitted"
            elif stored.how == "signed":
                how, detail = (
                    "signed",
                    f"{found}; sent as a pre-signed URL valid for {_minutes(self.sign_expiry)}",
                )
            else:
                how, detail = "inlined", f"{found}; sent as a data: URI"
            return stored.value, PreparedInput(target.label, value, how, detail), stored.secret
        # An https URL: sent as given, after its pre-flight. One the user signed is masked too.
        secret = value if _is_signed(value) else None
        if self.preflight_mode == "off":
            return (
                value,
                PreparedInput(target.label, shown_url(value), "sent as is", "preflight='off'"),
                secret,
            )
        result = self._preflight_client().check(target.label, value, target.kind)
        how = "not checked" if result.warning else "checked"
        return (
            value,
            PreparedInput(
                target.label, shown_url(value), how, result.warning or result.describe(), result.seconds
            ),
            secret,
        )

    def _preflight_client(self) -> Preflight:
        with self._lock:
            if self._preflight is None:
                self._preflight = Preflight(
                    mode=self.preflight_mode,
                    api_base_url=self.api_base_url,
                    timeout=self.preflight_timeout,
                    max_connections=self.max_concurrency,
                )
            return self._preflight

    def _mask_url(self, url: str) -> list[str]:
        """Give a pre-signed URL, its query and its signature values to the masker; return them."""
        query = urlsplit(url).query
        parts = [url, query, *credential_values(query)]
        secrets = [part for part in dict.fromkeys(parts) if len(part) >= _MIN_MASKED_LENGTH]
        for secret in secrets:
            self.mask(secret)
        return secrets


def _is_signed(url: str) -> bool:
    """Whether an https URL's query carries a credential (a signature, a token, a key): it is masked."""
    return bool(credential_values(urlsplit(url).query))


def _minutes(seconds: int) -> str:
    return f"{seconds // 3600} h {seconds % 3600 // 60} min" if seconds >= 3600 else f"{seconds // 60} min"


def _airflow_mask(secret: str) -> None:
    """Airflow's secrets masker, in the task process and its supervisor; nothing outside Airflow."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - the provider always runs with Airflow
        return
    mask_secret(secret)


def _warn_unchecked(log: Any, count: int, first: PreparedInput) -> None:
    """One warning for the inputs pre-flight could not reach (a batch has thousands on one host)."""
    if count == 1:
        log.warning(
            "Could not check RunComfy input %s %s before the submit (%s); submitting anyway, since "
            "RunComfy may reach hosts this worker cannot. preflight='strict' makes this an error.",
            first.field,
            first.given,
            first.detail,
        )
        return
    log.warning(
        "Could not check %d RunComfy inputs before the submit (the first, %s %s: %s); submitting them "
        "anyway, since RunComfy may reach hosts this worker cannot. preflight='strict' makes this an "
        "error.",
        count,
        first.field,
        first.given,
        first.detail,
    )
