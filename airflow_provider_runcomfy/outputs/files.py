"""Files in ``output_dir``: where they go, how they are written whole, and the record of one copy.

The pieces ``storage.OutputStore`` (one task's outputs), ``batch.copies`` (a batch's outputs)
and ``manifest`` (a run's manifest) share:

- where: ``resolve_output_dir`` (proven writable before anything is paid for),
  ``task_directory``, ``run_directory``, ``safe_segment``;
- whole or not at all: ``part_file`` / ``move_into_place`` (and ``write_atomically``
  built on them): the bytes go to ``{stem}.<random>.part`` next to the final name and are
  moved onto it only once complete and checked; a failed attempt deletes its part file;
- one copy: ``copy_output`` streams one output URL (``client.download``) into place and
  returns its ``StoredOutput``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from airflow_provider_runcomfy.client._limits import truncate
from airflow_provider_runcomfy.client.download import (
    CHUNK_SIZE,
    Download,
    OutputDownloader,
    OutputDownloadError,
    Sink,
)
from airflow_provider_runcomfy.client.errors import InvalidInputError, OutputStorageError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.client._aiodownload import AsyncOutputDownloader

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class StoredOutput:
    """One kept copy, as it appears in the task's return value under ``stored``.

    :param uri: where the copy is (``ObjectStoragePath`` can open it).
    :param source_url: the RunComfy output URL it was copied from.
    :param bytes: its size.
    :param sha256: its sha256, hex.
    :param content_type: its media type, e.g. ``image/png``.
    """

    uri: str
    source_url: str
    bytes: int
    sha256: str
    content_type: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (XCom, manifest, ``task_state_store``)."""
        return asdict(self)


def safe_segment(text: object) -> str:
    """``text`` as one path segment every object store accepts: ``[A-Za-z0-9._-]``, others become ``_``.

    Run ids hold ``:`` and ``+`` (``manual__2026-01-01T00:00:00+00:00``), which some stores
    and tools mishandle; dag and task ids are already safe and stay as they are.
    """
    segment = _UNSAFE.sub("_", str(text))
    return "_" if segment in ("", ".", "..") else segment


#: The Airflow provider that serves each common scheme, named when it is missing.
_PROVIDERS = (
    "s3://: apache-airflow-providers-amazon; gs://: apache-airflow-providers-google; "
    "abfs://, az://, wasb://: apache-airflow-providers-microsoft-azure"
)


def is_storage_path(value: Any) -> bool:
    """Whether ``value`` is already an ``ObjectStoragePath`` (Airflow's, which ``storage_path`` returns)."""
    try:
        from airflow.sdk import ObjectStoragePath
    except ImportError:  # pragma: no cover - Airflow is a dependency
        return False
    return isinstance(value, ObjectStoragePath)


def storage_path(
    location: Any,
    *,
    argument: str,
    access: Literal["read", "write"],
    error: Callable[[str], Exception] = InvalidInputError,
    fsspec_fallback: bool = True,
) -> ObjectStoragePath:
    """``location`` (a path, a URL or an ``ObjectStoragePath``) as an ``ObjectStoragePath``.

    The one resolver of storage locations: the inputs' files (``sources.storage``), a batch's
    inputs file, ``output_dir`` and its ledger all mean the same thing by the same text. A plain
    path is made absolute (``~`` expanded), so that retries on another working directory agree;
    a scheme no Airflow provider serves is served by fsspec's own filesystem (s3fs, gcsfs,
    adlfs, memory), configured the usual way for that library; a connection id in the URL
    (``s3://aws_default@bucket/key``) needs the provider that reads that connection.

    :param argument: how the messages name the location, e.g. ``output_dir`` or ``image_url``.
    :param access: what the caller will do there, in the messages (``read`` or ``write``).
    :param error: makes the exception to raise from a message (``InvalidInputError`` by default:
        the task fails without retries, before anything is paid for).
    :param fsspec_fallback: False where the storage a scheme reaches must stay what Airflow's
        providers register (the API server's outputs view: a record must not widen what it opens);
        such a scheme then fails as ``ObjectStoragePath`` fails (``ValueError``).
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    text = (os.fspath(location) if isinstance(location, os.PathLike) else str(location or "")).strip()
    if not text:
        raise error(f"{argument} is empty: give a local path or a URL such as s3://bucket/prefix.")
    scheme = urlsplit(text).scheme.lower()
    if len(scheme) <= 1:  # a plain path (or a Windows drive letter): absolute, so retries agree
        text, scheme = f"file://{Path(text).expanduser().resolve()}", "file"
    if fsspec_fallback and not airflow_serves(scheme):
        conn_id = urlsplit(text).username
        if conn_id:
            raise error(
                f"{argument} {text!r}: the connection {conn_id!r} needs the Airflow provider that "
                f"serves {scheme}:// ({_PROVIDERS}). Install it, or leave the connection out of the "
                "URL to use fsspec's own configuration."
            )
        attach_fsspec(
            scheme,
            lambda failure: error(
                f"{argument} {text!r}: no filesystem can {access} {scheme}:// here "
                f"({type(failure).__name__}: {truncate(failure, 200)}). Install the Airflow provider that "
                f"brings it ({_PROVIDERS}) or fsspec's package for it (s3fs, gcsfs, adlfs)."
            ),
        )
    return ObjectStoragePath(text)


def resolve_output_dir(output_dir: Any, *, probe: bool = True) -> ObjectStoragePath:
    """``output_dir`` (a path, a URL or an ``ObjectStoragePath``) as an ``ObjectStoragePath``, proven writable.

    Raises ``InvalidInputError`` (the task fails without retries) when it is empty or no
    filesystem can serve its scheme (``storage_path``), and ``OutputStorageError`` when a probe
    object cannot be written there and removed again (a read-only directory, a bucket without
    write access, an ``http://`` filesystem). Called before the job is submitted, so a wrong
    ``output_dir`` costs nothing.

    :param probe: write and remove the probe (``check_writable``); False where the caller
        writes at once anyway and turns a failure into a clear error itself.
    """
    path = storage_path(output_dir, argument="output_dir", access="write")
    if probe:
        check_writable(path)
    return path


def check_writable(path: ObjectStoragePath) -> None:
    """Write a small probe object into ``path`` and remove it; ``OutputStorageError`` if either fails.

    The only proof that copies can be kept there: a filesystem may open for reading and
    refuse writes (read-only mounts, http://), a bucket may deny ``PutObject`` or
    ``DeleteObject`` (the copies need both: part files are moved, then removed).
    """
    fs, folder = path.fs, path.path.rstrip("/")
    probe = f"{folder}/.runcomfy-probe-{uuid.uuid4().hex[:12]}"
    try:
        if not fs.exists(folder):
            fs.makedirs(folder, exist_ok=True)
        with fs.open(probe, "wb") as file:
            file.write(b"airflow-provider-runcomfy checks that output_dir can be written\n")
        fs.rm(probe)
    except Exception as error:  # OSError, NotImplementedError (http), an object store's own errors
        remove_quietly(fs, probe)
        raise OutputStorageError(
            f"output_dir {str(path)!r} cannot be written ({type(error).__name__}: {truncate(error, 300)}); "
            "nothing was submitted. Give a directory or bucket prefix the worker may write to and "
            "delete from (a local path, s3://, gs://...; http:// and https:// cannot be written)."
        ) from None


#: Schemes this process attached fsspec's filesystem for: attached (and logged) once, not once
#: per file of a batch. ``airflow_serves`` still answers for providers only: a URL naming a
#: connection needs the provider whatever was attached.
_ATTACHED: set[str] = set()


def airflow_serves(scheme: str) -> bool:
    """Whether ``ObjectStoragePath`` serves ``scheme`` as it is: a local path, or an Airflow provider's filesystem."""
    from airflow_provider_runcomfy.compat import has_fs

    return scheme in ("file", "local") or has_fs(scheme)


def attach_fsspec(scheme: str, failure: Callable[[Exception], Exception]) -> None:
    """Serve ``scheme`` by fsspec's own filesystem (s3fs, gcsfs, adlfs, memory) where no provider does.

    Shared by the outputs (``output_dir``) and the inputs (``sources.storage``).

    :param failure: makes the error to raise from fsspec's (``ImportError``: its package is not
        installed; ``ValueError``: the scheme is unknown), in the caller's words.
    """
    if scheme in _ATTACHED:
        return
    import fsspec
    from airflow.sdk.io import attach

    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as error:
        raise failure(error) from None
    attach(scheme, fs=fs)
    _ATTACHED.add(scheme)
    log.info("Airflow registers no filesystem for %s://; using fsspec's %s.", scheme, type(fs).__name__)


def task_directory(
    output_dir: Any, *, dag_id: str, run_id: str, task_id: str, map_index: int | None
) -> ObjectStoragePath:
    """``{output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}``: one task instance's copies, nobody else's."""
    index = -1 if map_index is None else int(map_index)
    return run_directory(output_dir, dag_id=dag_id, run_id=run_id) / safe_segment(task_id) / str(index)


def run_directory(output_dir: Any, *, dag_id: str, run_id: str) -> ObjectStoragePath:
    """``{output_dir}/{dag_id}/{run_id}``: where one DAG run's copies (and its manifest) go.

    Not probed: it is written at once, and the task checked ``output_dir`` before submitting.
    """
    return resolve_output_dir(output_dir, probe=False) / safe_segment(dag_id) / safe_segment(run_id)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` (an fsspec filesystem) is the local disk: writes are quick syscalls, files can stay open."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def write_atomically(path: ObjectStoragePath, write: Callable[[Sink], None]) -> ObjectStoragePath:
    """Write a file through ``write(sink)`` to a part file, then move it onto ``path``.

    Readers never see a half-written manifest or picture: the final name appears whole or not at all.
    """
    fs, target = path.fs, path.path
    _make_parent(fs, target)
    with part_file(fs, target.rsplit(".", 1)[0]) as (part, sink):
        write(sink)
    move_into_place(fs, part, target)
    return path


def sha256_of(path: ObjectStoragePath) -> str:
    """The sha256 of a stored file, read in chunks (memory stays flat)."""
    digest = hashlib.sha256()
    with path.fs.open(path.path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def copy_output(
    downloader: OutputDownloader,
    folder: ObjectStoragePath,
    stem: str,
    url: str,
    *,
    label: str,
    request_id: str,
) -> StoredOutput:
    """Stream ``url`` into ``{folder}/{stem}.{ext}`` (the extension from what arrived), whole or not at all.

    :param label: names the output in an error ("Output 2 of RunComfy request abc").
    :param request_id: the request the output belongs to, carried by the error.
    """
    copy = _Copy(folder, stem, label, request_id)
    try:
        download = downloader.download(url, copy.open_part)
    except OutputDownloadError as error:
        raise copy.labelled(error) from error
    return copy.placed(url, download)


async def acopy_output(
    downloader: AsyncOutputDownloader,
    folder: ObjectStoragePath,
    stem: str,
    url: str,
    *,
    label: str,
    request_id: str,
) -> StoredOutput:
    """``copy_output`` on an event loop (a batch's copies to a local disk, ``batch.copies``)."""
    copy = _Copy(folder, stem, label, request_id)
    try:
        download = await downloader.download(url, copy.open_part)
    except OutputDownloadError as error:
        raise copy.labelled(error) from error
    return copy.placed(url, download)


class _Copy:
    """One output's way into ``{folder}/{stem}.{ext}``: its part files, its name, its errors."""

    def __init__(self, folder: ObjectStoragePath, stem: str, label: str, request_id: str) -> None:
        self.folder, self.stem, self.label, self.request_id = folder, stem, label, request_id
        self.fs, self.root = folder.fs, folder.path
        self.parts: list[str] = []

    @contextmanager
    def open_part(self) -> Iterator[Sink]:
        with part_file(self.fs, f"{self.root}/{self.stem}") as (part, sink):
            self.parts.append(part)
            yield sink

    def labelled(self, error: OutputDownloadError) -> OutputDownloadError:
        return type(error)(
            f"{self.label}: {error.message}",
            status_code=error.status_code,
            retry_after=error.retry_after,
            request_id=self.request_id,
        )

    def placed(self, url: str, download: Download) -> StoredOutput:
        name = f"{self.stem}.{download.extension}"
        move_into_place(self.fs, self.parts[-1], f"{self.root}/{name}")
        return StoredOutput(
            uri=str(self.folder / name),
            source_url=url,
            bytes=download.bytes,
            sha256=download.sha256,
            content_type=download.content_type,
        )


@contextmanager
def part_file(fs: Any, stem: str) -> Iterator[tuple[str, Any]]:
    """A new ``{stem}.<random>.part`` open for writing; deleted again if the block fails."""
    part = f"{stem}.{uuid.uuid4().hex[:12]}.part"
    try:
        with fs.open(part, "wb") as file:
            yield part, file
    except BaseException:
        remove_quietly(fs, part)
        raise


def move_into_place(fs: Any, part: str, target: str) -> None:
    """Move a complete part file onto its final name (a rename on local disks: atomic)."""
    try:
        fs.mv(part, target)
    except BaseException:
        remove_quietly(fs, part)
        raise


def _make_parent(fs: Any, target: str) -> None:
    """Create the folder ``target`` goes into (object stores need no folders; local disks do)."""
    parent = target.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)


def remove_quietly(fs: Any, path: str) -> None:
    """Delete ``path`` if it is there; a failure is logged, never raised (a stray part file is harmless)."""
    try:
        fs.rm(path)
    except (FileNotFoundError, OSError):
        pass
    except Exception as error:  # an object store's own errors: a stray part file is not worth failing for
        log.warning("Could not remove %s: %s", path, error)
