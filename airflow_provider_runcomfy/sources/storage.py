"""Input files in the user's own storage: checked, then signed (s3, gs, azure) or inlined (local).

A filesystem that can sign (fsspec's ``sign``: s3fs, gcsfs, adlfs) gives a
pre-signed URL that RunComfy fetches itself, valid for ``expiry`` seconds;
the file's bytes never pass through the worker. Any other filesystem (local
disk, ``file://``, ``memory://``) has its file read and sent inline as a
``data:`` URI, which RunComfy accepts up to about 6 MiB
(``MAX_DATA_URI_BYTES``); a larger file is refused before any request.

Either way the file is looked at first: it must exist, be a PNG, JPEG or WebP
image (by its magic bytes) when the field takes an image, and be within
RunComfy's size guide. That costs one metadata call and one ranged read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from airflow_provider_runcomfy.client.download import shown_url
from airflow_provider_runcomfy.models.image_url import MAX_DATA_URI_BYTES, image_url_problem
from airflow_provider_runcomfy.outputs.files import storage_path
from airflow_provider_runcomfy.sources.errors import InputSourceError
from airflow_provider_runcomfy.sources.images import (
    MAGIC_LENGTH,
    SIZE_GUIDES,
    InputKind,
    data_uri,
    describe_size,
    sniff_image,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


_SHOWN_ERROR_LENGTH = 200


@dataclass(frozen=True)
class StoredInput:
    """One input file from storage, ready to send.

    :param reference: the path the user gave (what is recorded: XCom, manifest, fingerprint).
    :param value: what is sent: a pre-signed URL or a ``data:`` URI.
    :param how: ``signed`` or ``inlined``.
    :param media_type: the image type read from its magic bytes (None: not an image we know).
    :param size: its size in bytes.
    """

    reference: str
    value: str
    how: Literal["signed", "inlined"]
    media_type: str | None
    size: int

    @property
    def secret(self) -> str | None:
        """The pre-signed URL, which is a credential: it must be masked in logs."""
        return self.value if self.how == "signed" and self.value != self.reference else None


def open_reference(reference: str, *, field: str = "input") -> ObjectStoragePath:
    """``reference`` (a storage URL or an absolute local path) as an ``ObjectStoragePath``.

    The rules are ``outputs.files.storage_path``'s, the same as for ``output_dir``; an error is
    an ``InputSourceError`` naming ``field``.
    """
    return storage_path(reference, argument=field, access="read", error=InputSourceError)


def prepare_stored(
    field: str, reference: str, kind: InputKind, *, expiry: int, check_only: bool = False
) -> StoredInput:
    """Check the file ``reference`` names, then sign it or inline it.

    :param field: the input's name for messages (``image_urls[2]``).
    :param check_only: check everything but read no more than the magic bytes: the value
        returned is the reference itself (a batch checks all its items first, and prepares each
        one for real just before its submit, so that a signature is fresh).
    :param kind: what the field takes; an ``image`` must be a PNG, JPEG or WebP file. Only
        such images may be inlined (a ``file`` field holding one too).
    :param expiry: seconds a pre-signed URL stays valid.
    :raises InputSourceError: the file is missing, unreadable, not an image, over a guide, or
        (not signable and) over the data-URI limit -- before any request to RunComfy.
    """
    path = open_reference(reference, field=field)
    fs, key = path.fs, path.path
    where = f"{field} {reference}"
    size = _size(fs, key, where)
    guide = SIZE_GUIDES[kind]
    if size > guide:
        raise InputSourceError(
            f"{where} is {describe_size(size)}, over RunComfy's guide of {describe_size(guide)} for "
            f"{'an ' if kind == 'image' else 'a '}{kind}: scale it down (about 4K is the most an image "
            "model takes) and try again."
        )
    media_type = None
    if kind in ("image", "file"):  # a field of unknown kind may hold an image: then it may go inline
        head = _read(fs, key, where, end=MAGIC_LENGTH)
        media_type = sniff_image(head)
        if media_type is None and kind == "image":
            raise InputSourceError(
                f"{where} is not a PNG, JPEG or WebP image (its first bytes are {head[:8]!r}): "
                "convert it, or check that the path names the picture you meant."
            )
    signed = _sign(fs, key, where, expiry)  # cheap: computed locally, no request
    if signed is not None:
        return StoredInput(reference, reference if check_only else signed, "signed", media_type, size)
    if media_type is None:
        raise InputSourceError(
            f"{where}: this storage cannot make a pre-signed URL, and RunComfy takes only images "
            "inline. Put the file where a pre-signed URL can be made (s3://, gs://, abfs://) or pass "
            "an https:// URL."
        )
    if size > MAX_DATA_URI_BYTES:
        raise InputSourceError(
            f"{where} is {describe_size(size)}: a file in storage that cannot sign URLs (a local "
            f"disk, file://) is sent inline as a data: URI, which RunComfy accepts up to "
            f"{MAX_DATA_URI_BYTES // (1024 * 1024)} MiB. Put it in s3:// or gs:// storage (its "
            "pre-signed URL is sent instead), or pass an https:// URL."
        )
    if check_only:
        return StoredInput(reference, reference, "inlined", media_type, size)
    data = _read(fs, key, where)
    if len(data) > MAX_DATA_URI_BYTES:  # it grew since its size was read
        raise InputSourceError(f"{where} changed while it was read ({describe_size(len(data))}); try again.")
    return StoredInput(reference, data_uri(media_type, data), "inlined", media_type, len(data))


def _size(fs: Any, key: str, where: str) -> int:
    try:
        info = fs.info(key)
    except FileNotFoundError:
        raise InputSourceError(f"{where} does not exist: check the path (and the bucket).") from None
    except PermissionError as error:
        raise InputSourceError(f"{where} cannot be read: permission denied ({_short(error)}).") from None
    except Exception as error:  # a store's own errors (credentials, endpoint): say which, shortly
        raise InputSourceError(f"{where} could not be looked up: {_short(error)}.") from None
    if info.get("type") not in (None, "file"):
        raise InputSourceError(f"{where} is a {info.get('type')}, not a file.")
    size = info.get("size")
    return int(size) if isinstance(size, int) else 0


def _read(fs: Any, key: str, where: str, *, end: int | None = None) -> bytes:
    try:
        data: bytes = fs.cat_file(key, start=0, end=end) if end else fs.cat_file(key)
    except FileNotFoundError:
        raise InputSourceError(f"{where} does not exist: check the path (and the bucket).") from None
    except Exception as error:
        raise InputSourceError(f"{where} could not be read: {_short(error)}.") from None
    return data


def _sign(fs: Any, key: str, where: str, expiry: int) -> str | None:
    """A pre-signed URL for ``key``, or ``None`` when this filesystem cannot sign."""
    try:
        url = str(fs.sign(key, expiration=int(expiry)))
    except NotImplementedError:
        return None
    except Exception as error:
        raise InputSourceError(
            f"{where}: a pre-signed URL could not be made ({_short(error)}). Check the storage "
            "credentials: signing needs a key or service account that may read the object."
        ) from None
    problem = image_url_problem(url)
    if problem is not None:
        parts = urlsplit(url)
        raise InputSourceError(
            f"{where}: its pre-signed URL ({shown_url(url)}) is not one RunComfy can fetch "
            f"({parts.scheme}:// on {parts.hostname!r}); RunComfy fetches https:// URLs on public "
            "hosts. Serve the storage over https."
        )
    return url


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _SHOWN_ERROR_LENGTH else text[: _SHOWN_ERROR_LENGTH - 3] + "..."
