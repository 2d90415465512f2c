"""Credentials out of texts that came from elsewhere, before anything keeps or shows them.

A pre-signed URL is a credential: whoever reads it can fetch (or, for an upload URL,
write) the object until it expires. RunComfy quotes input URLs in its error texts,
inputs files can hold signed URLs, and those texts end up in logs, XCom, the batch's
ledger and manifest, lineage and the UI. One rule decides which query parameters
carry a credential; the input masking (``sources.prepare``) and every remote text use
it, so a parameter masked in one place is never shown in another.

Dependency-free on purpose: the batch's ledger code and the client both import it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = [
    "REDACTED",
    "credential_values",
    "is_credential_param",
    "redact_text",
    "redact_url",
    "redact_value",
]

#: What a credential's value becomes: the same marker Airflow's secrets masker writes.
REDACTED = "***"

#: Words that, inside a query parameter's name, make its value a credential. Broad on
#: purpose: masking a harmless value costs a little readability, showing a signature costs
#: the object. ``sig`` covers Azure SAS, ``key`` covers ``Key-Pair-Id`` and API keys,
#: ``policy`` CloudFront, ``signature``/``credential``/``token`` S3 and GCS.
_CREDENTIAL_WORDS = (
    "signature",
    "sig",
    "credential",
    "token",
    "key",
    "policy",
    "secret",
    "password",
    "passwd",
    "auth",
    "session",
)

#: Name prefixes whose every parameter belongs to a signing scheme (S3, GCS).
_CREDENTIAL_PREFIXES = ("x-amz-", "x-goog-")

# A parameter inside a query, raw or percent-encoded once (a URL quoted inside another
# URL's query), or HTML-escaped. Only bounded classes and no nested quantifiers: the
# scan stays linear whatever the text (these texts come from outside too).
_SEP = r"(?:[?&;]|&amp;|%3[Ff]|%26)"
_NAME = r"[A-Za-z0-9_.~\-\[\]]{1,128}"
_EQ = r"(?:=|%3[Dd])"
_VALUE = r"(?:(?!%26|%3[Ff]|&amp;)[^&\s\"'<>#\\;])*"
_TRAILING = ".,:!?)]}"
_PARAM = re.compile(rf"(?P<sep>{_SEP})(?P<name>{_NAME})(?P<eq>{_EQ})(?P<value>{_VALUE})")

# ``scheme://userinfo@``: the userinfo (a password, a token) goes, the host stays.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^/\s@?#\"'<>\\]{1,1024}@")

# ``Bearer <token>`` quoted back by a proxy or an error page.
_BEARER = re.compile(r"(?P<word>\b[Bb]earer\s{1,8})[A-Za-z0-9._~+/=\-]{8,}")


def is_credential_param(name: str) -> bool:
    """Whether a query parameter's value is a credential: one rule for masking and redacting."""
    lowered = unquote(name).lower()
    return lowered.startswith(_CREDENTIAL_PREFIXES) or any(word in lowered for word in _CREDENTIAL_WORDS)


def credential_values(query: str) -> list[str]:
    """The values of a URL query's parameters that carry a credential, for a secrets masker."""
    return [value for name, value in parse_qsl(query, keep_blank_values=False) if is_credential_param(name)]


def _redact_param(match: re.Match[str]) -> str:
    value = match["value"]
    if not is_credential_param(match["name"]) or not value:
        return match[0]
    # Prose around a URL ("... ?sig=abc: 403", "(see ...?sig=abc).") keeps its punctuation.
    kept = value[len(value.rstrip(_TRAILING)) :]
    return f"{match['sep']}{match['name']}{match['eq']}{REDACTED}{kept}"


def redact_text(text: str) -> str:
    """``text`` with every credential in it replaced by ``***``.

    Credentials are the values of query parameters named by the shared rule (wherever
    the URL is: plain, percent-encoded inside another URL, HTML-escaped), the userinfo
    of URLs and ``Bearer`` tokens. Everything else is kept, so the text still says what
    went wrong.
    """
    if not text:
        return text
    redacted = _PARAM.sub(_redact_param, text)
    redacted = _USERINFO.sub(lambda match: f"{match['scheme']}{REDACTED}@", redacted)
    return _BEARER.sub(lambda match: f"{match['word']}{REDACTED}", redacted)


def redact_url(url: str) -> str:
    """``url`` without the values of its credential parameters nor its userinfo.

    The same scan as ``redact_text``: a URL that does not parse is still cleaned, and
    the rest of it (host, path, harmless parameters) stays as it was for the reader.
    """
    return redact_text(url)


#: Nesting below which ``redact_value`` stops copying and describes the rest as redacted.
_MAX_DEPTH = 32


def redact_value(value: Any, _depth: int = 0) -> Any:
    """``value`` (a JSON-like answer: dicts, lists, texts) with every text in it redacted.

    For what is kept as data rather than text (a job's ``error`` object, a 422 ``detail``):
    keys are redacted too, since a remote answer may key anything by a URL.
    """
    if isinstance(value, str):
        return redact_text(value)
    if _depth > _MAX_DEPTH:
        return REDACTED if isinstance(value, dict | list | tuple) else value
    if isinstance(value, dict):
        return {redact_value(k, _depth + 1): redact_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item, _depth + 1) for item in value)
    return value
