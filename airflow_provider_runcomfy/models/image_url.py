"""The one rule for every image URL a seed model takes as input.

RunComfy fetches input files itself, with no cookies and no login, so a URL it
cannot GET fails the job only after it was queued (and possibly billed). We
therefore check the shape of each URL before anything is sent:

* ``https://`` with a host: what RunComfy documents;
* ``http://`` only on a loopback host (``localhost``, ``127.0.0.1``, ``[::1]``),
  so tests can point the emulator at files it serves itself; a public
  ``http://`` URL is refused because RunComfy asks for HTTPS;
* ``data:image/<type>;base64,<data>``: RunComfy accepts data URIs (a PNG of
  about 6 MiB), so a larger one is refused with the advice to host the file;
* a file in the user's own storage: an ``s3://``, ``gs://``, ``abfs://``,
  ``file://``... URL, an absolute local path, or an ``ObjectStoragePath``.
  RunComfy cannot fetch those; ``airflow_provider_runcomfy.sources`` turns each
  into a pre-signed https URL or a ``data:`` URI when the task runs. Here only
  the shape is checked (no I/O: this runs when the DAG is parsed).

The value stays a plain ``str``, exactly as the user wrote it (an
``ObjectStoragePath`` or ``pathlib.Path`` becomes its string form): we check
it, we never rewrite it.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, StrictStr
from pydantic_core import PydanticCustomError

from airflow_provider_runcomfy.client._validation import is_loopback_host

#: Largest file sent inline as a ``data:`` URI, in bytes: the ~6 MiB PNG RunComfy's Model API
#: is seen to accept. (RunComfy's own clients cap data URIs at 64 MiB, but that is a guard of
#: theirs, not a promise of the API's.) Larger files go through a pre-signed URL instead.
MAX_DATA_URI_BYTES = 6 * 1024 * 1024

#: Longest data URI accepted, in characters: the base64 of ``MAX_DATA_URI_BYTES`` (4/3 of it)
#: and room for the ``data:image/<type>;base64,`` header.
MAX_DATA_URI_LENGTH = 4 * MAX_DATA_URI_BYTES // 3 + 64

#: URL schemes of storage read through fsspec (``ObjectStoragePath``) rather than fetched by RunComfy.
STORAGE_SCHEMES = frozenset(
    {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "file", "local", "memory"}
)

ACCEPTED_IMAGE_URLS = (
    "an https:// URL RunComfy can fetch without login, an http:// URL on a loopback host "
    "(emulator only), a data:image/...;base64,... URI, or a file in your storage "
    "(s3://, gs://, abfs://, file:// or an absolute local path), which is signed or inlined "
    "when the task runs"
)

_DATA_URI_HEADER = re.compile(r"data:image/[a-z0-9.+-]+(?:;[a-z0-9._-]+=[^;,\s]*)*;base64,", re.IGNORECASE)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_SHOWN_URL_LENGTH = 100


def is_storage_reference(value: str) -> bool:
    """Whether ``value`` names a file in the user's storage: a storage URL or an absolute local path.

    Such a value is not sent as it is: ``airflow_provider_runcomfy.sources`` signs or inlines it.
    A path must be absolute (``/data/in.png``): a relative one would depend on the worker's
    working directory. ``//host/x`` is a scheme-relative URL, not a path.
    """
    if not value or _WHITESPACE_OR_CONTROL.search(value[:1] + value[-1:]):
        return False
    if value.startswith("/"):
        return not value.startswith("//")
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme.lower() in STORAGE_SCHEMES and bool(rest.strip("/"))


def as_reference(value: Any) -> Any:
    """An ``ObjectStoragePath`` or ``os.PathLike`` as its string form; any other value unchanged.

    ``str(ObjectStoragePath)`` keeps the connection id (``s3://aws_default@bucket/key``), so
    the string opens the same storage again.
    """
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if (
        not isinstance(value, (str, bytes))
        and hasattr(value, "protocol")
        and hasattr(value, "storage_options")
    ):
        text = str(value)  # a UPath / ObjectStoragePath; a local one prints as a bare path
        return text if "://" in text or text.startswith("/") else value
    return value


def as_references(value: Any) -> Any:
    """``as_reference`` of a value, or of each item of a list or tuple (which becomes a list)."""
    if isinstance(value, (list, tuple)):
        return [as_reference(item) for item in value]
    return as_reference(value)


def image_url_problem(url: str) -> str | None:
    """Say what is wrong with ``url`` as an image URL to send, or return ``None`` when it is accepted.

    The answer is a sentence fragment for an error message (it names neither the
    field nor the model; the caller does). Storage references (``is_storage_reference``)
    are not URLs RunComfy can fetch: this refuses them; the model fields accept them.
    """
    if url[:5].lower() == "data:":
        return _data_uri_problem(url)
    if not url:
        return f"an empty string is not a URL; expected {ACCEPTED_IMAGE_URLS}"
    shown = _shown(url)
    if _WHITESPACE_OR_CONTROL.search(url):
        return (
            f"{shown} contains whitespace or control characters; percent-encode them (e.g. %20) "
            f"or remove them. Expected {ACCEPTED_IMAGE_URLS}"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - reading it validates the port number
    except ValueError:
        return f"{shown} is not a valid URL; expected {ACCEPTED_IMAGE_URLS}"
    scheme = parts.scheme.lower()
    if not scheme:
        return f"{shown} is not an absolute URL; expected {ACCEPTED_IMAGE_URLS}"
    if scheme not in ("https", "http"):
        return f"{shown}: scheme {scheme!r} is not accepted; expected {ACCEPTED_IMAGE_URLS}"
    if not url[len(scheme) + 1 :].startswith("//"):
        return f"{shown} is missing '//' after '{scheme}:'; expected {ACCEPTED_IMAGE_URLS}"
    if not host:
        return f"{shown} has no host; expected {ACCEPTED_IMAGE_URLS}"
    if scheme == "http" and not is_loopback_host(host):
        return (
            f"{shown}: http:// is accepted only on a loopback host (emulator only) and {host!r} is "
            "not one; RunComfy fetches inputs over https://"
        )
    return None


def _data_uri_problem(url: str) -> str | None:
    # The size is checked first and without scanning the payload: a 50 MB string
    # must be refused quickly, with the advice that actually helps.
    if len(url) > MAX_DATA_URI_LENGTH:
        return (
            f"a data URI of {len(url) / (1024 * 1024):.1f} MiB is too large: RunComfy accepts data URIs "
            f"up to about {MAX_DATA_URI_LENGTH // (1024 * 1024)} MiB (a PNG of about "
            f"{MAX_DATA_URI_BYTES // (1024 * 1024)} MiB). Host the file where RunComfy can fetch it: pass "
            "its s3:// or gs:// path (the provider signs it) or a pre-signed https:// URL instead"
        )
    header = _DATA_URI_HEADER.match(url)
    if header is None:
        return f"{_shown(url)} is not an image data URI; expected data:image/<type>;base64,<data>"
    if not _BASE64.fullmatch(url, header.end()):
        return f"{_shown(url)}: the data after ';base64,' is not base64 (or is empty)"
    return None


def _shown(url: str) -> str:
    """The URL as quoted in an error: no query string (it may hold a signature), no megabytes of data."""
    if url[:5].lower() == "data:":
        head = url.split(",", 1)[0]
        return f"'{head[:_SHOWN_URL_LENGTH]},...' ({len(url)} characters)"
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    shown = url[:cut] + ("?..." if cut < len(url) else "")
    if len(shown) > _SHOWN_URL_LENGTH:
        shown = shown[: _SHOWN_URL_LENGTH - 3] + "..."
    return repr(shown)


def _check_image_url(url: str) -> str:
    problem = image_url_problem(url)
    if problem is not None and not is_storage_reference(url):
        # A PydanticCustomError keeps our sentence as the message, without the
        # "Value error, " prefix pydantic puts on a plain ValueError.
        raise PydanticCustomError("image_url", "{problem}", {"problem": problem})
    return url


#: A string that is an acceptable image input (see the module docstring); dumped unchanged.
ImageUrl = Annotated[StrictStr, BeforeValidator(as_reference), AfterValidator(_check_image_url)]
