"""Copies of a task's RunComfy outputs in the user's own storage (``output_dir``).

RunComfy's output URLs are temporary. When an operator or the sensor has an
``output_dir``, each output is streamed (``client.download``) to

    {output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}/{request_id}_{n}.{ext}

``output_dir`` is anything ``ObjectStoragePath`` opens: a local path,
``file://``, ``s3://``, ``gs://``, ``memory://``... A scheme for which Airflow
registers no filesystem (``memory://`` out of the box) is served by fsspec's
own implementation, when fsspec has one.

**Never a partial file under the final name.** The bytes go to
``{request_id}_{n}.<random>.part`` next to the final name and are moved onto
it only once complete and checked; a failed attempt deletes its part file,
and the next try deletes parts a killed try left behind.

**Not copied twice.** Each kept copy is recorded (uri, bytes, sha256) in the
task instance's ``task_state_store``, which Airflow keeps across retries and
clears. A later try that re-attaches to the same request (so the names are
the same) finds the record, checks that the file is still there with that
size, and re-hashes it: if it matches, the copy is reused without fetching the
URL again. Re-hashing reads the copy once -- cheaper than a download from
RunComfy, and it catches a file replaced or damaged in between. Without a
record (none written, or it expired) the file is downloaded again and
replaces the old one atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_runcomfy.client._limits import truncate
from airflow_provider_runcomfy.client.download import (
    CHUNK_SIZE,
    DEFAULT_MAX_OUTPUT_BYTES,
    OutputDownloader,
    OutputDownloadError,
    Sink,
)
from airflow_provider_runcomfy.client.errors import InvalidInputError, OutputStorageError, RunComfyError

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

log = logging.getLogger(__name__)

#: ``task_state_store`` key of the copies a task instance has made (kept across retries and clears).
STATE_KEY = "runcomfy_stored"

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


def resolve_output_dir(output_dir: Any, *, probe: bool = True) -> ObjectStoragePath:
    """``output_dir`` (a path, a URL or an ``ObjectStoragePath``) as an ``ObjectStoragePath``, proven writable.

    Raises ``InvalidInputError`` (the task fails without retries) when it is empty or no
    filesystem can serve its scheme, and ``OutputStorageError`` when a probe object cannot be
    written there and removed again (a read-only directory, a bucket without write access,
    an ``http://`` filesystem). Called before the job is submitted, so a wrong ``output_dir``
    costs nothing.

    :param probe: write and remove the probe (``check_writable``); False where the caller
        writes at once anyway and turns a failure into a clear error itself.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_dir, ObjectStoragePath):
        if probe:
            check_writable(output_dir)
        return output_dir
    text = (os.fspath(output_dir) if isinstance(output_dir, os.PathLike) else str(output_dir or "")).strip()
    if not text:
        raise InvalidInputError(
            "output_dir is empty: give a local directory or a URL such as s3://bucket/prefix."
        )
    scheme = urlsplit(text).scheme.lower()
    if len(scheme) <= 1:  # a plain path (or a Windows drive letter): absolute, so retries agree
        text, scheme = f"file://{Path(text).expanduser().resolve()}", "file"
    _ensure_filesystem(scheme, text)
    path = ObjectStoragePath(text)
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
        _remove_quietly(fs, probe)
        raise OutputStorageError(
            f"output_dir {str(path)!r} cannot be written ({type(error).__name__}: {truncate(error, 300)}); "
            "nothing was submitted. Give a directory or bucket prefix the worker may write to and "
            "delete from (a local path, s3://, gs://...; http:// and https:// cannot be written)."
        ) from None


def _ensure_filesystem(scheme: str, output_dir: str) -> None:
    """Make ``scheme`` usable by ``ObjectStoragePath``: Airflow's filesystem if any, else fsspec's."""
    from airflow.sdk.io import attach, has_fs

    if scheme in ("file", "local") or has_fs(scheme):
        return
    import fsspec

    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as error:
        raise InvalidInputError(
            f"output_dir {output_dir!r}: no filesystem can write {scheme}:// here ({error}). Install the "
            "Airflow provider that brings it (s3://: apache-airflow-providers-amazon; gs://: "
            "apache-airflow-providers-google; abfs://, wasb://: apache-airflow-providers-microsoft-azure)."
        ) from None
    attach(scheme, fs=fs)
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


def write_atomically(path: ObjectStoragePath, write: Callable[[Sink], None]) -> ObjectStoragePath:
    """Write a file through ``write(sink)`` to a part file, then move it onto ``path``.

    Readers never see a half-written manifest or picture: the final name appears whole or not at all.
    """
    fs, target = path.fs, path.path
    _make_parent(fs, target)
    with _part_file(fs, target.rsplit(".", 1)[0]) as (part, sink):
        write(sink)
    _move(fs, part, target)
    return path


def sha256_of(path: ObjectStoragePath) -> str:
    """The sha256 of a stored file, read in chunks (memory stays flat)."""
    digest = hashlib.sha256()
    with path.fs.open(path.path, "rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class OutputStore:
    """Keeps the outputs of one task instance under ``directory``.

    :param directory: the task instance's directory (``task_directory``).
    :param max_output_bytes: the cap on one file.
    :param state_store: the task instance's ``task_state_store``, where copies are recorded
        so that a later try does not download them again; None disables that.
    :param logger: where to say what was kept (the task's log).
    :param api_base_url: the RunComfy API's base URL, which decides the output-URL policy
        (``client.download.check_fetch_url``): None means RunComfy's own -- https to public
        hosts only; the emulator's base URL allows its plain-http loopback files.
    """

    def __init__(
        self,
        directory: ObjectStoragePath,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        state_store: Any = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | Any = None,
        api_base_url: str | None = None,
    ) -> None:
        self.directory = directory
        self.max_output_bytes = max_output_bytes
        self.state_store = state_store
        self.log = logger or log
        self.api_base_url = api_base_url

    @classmethod
    def for_task(
        cls,
        context: Context,
        output_dir: Any,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        logger: Any = None,
        api_base_url: str | None = None,
    ) -> OutputStore:
        """The store of the running task instance (names from ``context["ti"]``).

        :param api_base_url: as for ``OutputStore``; when not given, the base URL of the
            running task's RunComfy connection (``task.hook.client``), if it has one.
        """
        ti = context["ti"]
        directory = task_directory(
            output_dir, dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, map_index=ti.map_index
        )
        return cls(
            directory,
            max_output_bytes=max_output_bytes,
            state_store=context.get("task_state_store"),
            logger=logger,
            api_base_url=api_base_url or _task_api_base_url(context),
        )

    def keep(self, request_id: str, urls: Sequence[str]) -> list[StoredOutput]:
        """Copy each of ``urls`` (the outputs of ``request_id``) here, or reuse a complete earlier copy.

        A storage failure (disk full, permission denied, the store unreachable) is an
        ``OutputStorageError`` naming the directory, never a bare ``OSError``.
        """
        try:
            return self._keep(request_id, urls)
        except RunComfyError:
            raise
        except Exception as error:  # OSError and the like from the filesystem, fsspec's, boto's...
            raise OutputStorageError(
                f"Could not keep the outputs of RunComfy request {request_id} in {str(self.directory)!r} "
                f"({type(error).__name__}: {truncate(error, 300)}). The job succeeded and was paid; its "
                "outputs stay at RunComfy's URLs until they expire. Fix output_dir (space, permissions, "
                f"credentials) and clear the task: it re-attaches to request {request_id} and copies "
                "them without paying again.",
                request_id=request_id,
            ) from error

    def _keep(self, request_id: str, urls: Sequence[str]) -> list[StoredOutput]:
        fs, folder = self.directory.fs, self.directory.path
        fs.makedirs(folder, exist_ok=True)
        self._remove_part_files()
        records = self._records(request_id)
        kept: list[StoredOutput] = []
        with OutputDownloader(max_bytes=self.max_output_bytes, api_base_url=self.api_base_url) as downloader:
            for n, url in enumerate(urls):
                stem = f"{safe_segment(request_id)}_{n}"
                copy = self._reuse(records.get(stem), url)
                if copy is None:
                    copy = self._download(downloader, request_id, n, url, stem)
                    records[stem] = copy.as_dict()
                    self._record(request_id, records)
                kept.append(copy)
        return kept

    # -- one file --------------------------------------------------------------------------------

    def _download(
        self, downloader: OutputDownloader, request_id: str, n: int, url: str, stem: str
    ) -> StoredOutput:
        fs, folder = self.directory.fs, self.directory.path
        parts: list[str] = []

        @contextmanager
        def open_part() -> Iterator[Sink]:
            with _part_file(fs, f"{folder}/{stem}") as (part, sink):
                parts.append(part)
                yield sink

        try:
            download = downloader.download(url, open_part)
        except OutputDownloadError as error:
            raise type(error)(
                f"Output {n} of RunComfy request {request_id}: {error.message}",
                status_code=error.status_code,
                retry_after=error.retry_after,
                request_id=request_id,
            ) from error
        name = f"{stem}.{download.extension}"
        _move(fs, parts[-1], f"{folder}/{name}")
        copy = StoredOutput(
            uri=str(self.directory / name),
            source_url=url,
            bytes=download.bytes,
            sha256=download.sha256,
            content_type=download.content_type,
        )
        self.log.info(
            "Kept output %d of RunComfy request %s: %s (%d bytes, sha256 %s).",
            n,
            request_id,
            copy.uri,
            copy.bytes,
            copy.sha256[:12],
        )
        return copy

    def _reuse(self, record: Any, url: str) -> StoredOutput | None:
        """The earlier copy ``record`` describes, if it is still here, whole and unchanged."""
        if not isinstance(record, dict):
            return None
        try:
            name = str(record["uri"]).rsplit("/", 1)[-1]
            path = self.directory / name
            if str(path) != record["uri"]:  # output_dir changed since: copy again, there
                return None
            fs = path.fs
            if not fs.exists(path.path) or fs.size(path.path) != record["bytes"]:
                return None
            if sha256_of(path) != record["sha256"]:
                self.log.warning("The copy at %s changed since it was made; downloading it again.", path)
                return None
            copy = StoredOutput(
                uri=record["uri"],
                source_url=url,
                bytes=int(record["bytes"]),
                sha256=str(record["sha256"]),
                content_type=str(record["content_type"]),
            )
        except (KeyError, TypeError, ValueError, OSError) as error:
            self.log.info("Not reusing the earlier copy %s (%s).", record.get("uri"), error)
            return None
        self.log.info(
            "Output %s was already kept by an earlier try (same size and sha256); not downloading it again.",
            copy.uri,
        )
        return copy

    # -- bookkeeping -----------------------------------------------------------------------------

    def _records(self, request_id: str) -> dict[str, Any]:
        """The copies recorded for ``request_id`` by earlier tries (those of other requests are dropped)."""
        if self.state_store is None:
            return {}
        try:
            value = self.state_store.get(STATE_KEY)
        except Exception as error:  # the store is an optimisation: without it, files are fetched again
            self.log.warning("Could not read the record of earlier copies (%s); downloading anew.", error)
            return {}
        if isinstance(value, dict) and value.get("request_id") == request_id:
            files = value.get("files")
            return dict(files) if isinstance(files, dict) else {}
        return {}

    def _record(self, request_id: str, records: dict[str, Any]) -> None:
        """Record the copies made so far, after each file, so a crash keeps what was done."""
        if self.state_store is None:
            return
        try:
            self.state_store.set(STATE_KEY, {"request_id": request_id, "files": records})
        except Exception as error:
            self.log.warning("Could not record the copies (%s); a retry would download them again.", error)

    def _remove_part_files(self) -> None:
        """Delete part files a killed try left here (this folder belongs to this task instance alone)."""
        fs = self.directory.fs
        try:
            names = fs.ls(self.directory.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            if str(name).endswith(".part"):
                self.log.info("Removing %s, left by an interrupted try.", name)
                _remove_quietly(fs, str(name))


def _task_api_base_url(context: Any) -> str | None:
    """The API base URL of the running task's RunComfy hook (operators and the sensor have one)."""
    try:
        return str(context["task"].hook.client.base_url)
    except Exception:  # no task, no hook, no connection: the strict policy applies
        return None


@contextmanager
def _part_file(fs: Any, stem: str) -> Iterator[tuple[str, Any]]:
    """A new ``{stem}.<random>.part`` open for writing; deleted again if the block fails."""
    part = f"{stem}.{uuid.uuid4().hex[:12]}.part"
    try:
        with fs.open(part, "wb") as file:
            yield part, file
    except BaseException:
        _remove_quietly(fs, part)
        raise


def _move(fs: Any, part: str, target: str) -> None:
    """Move a complete part file onto its final name (a rename on local disks: atomic)."""
    try:
        fs.mv(part, target)
    except BaseException:
        _remove_quietly(fs, part)
        raise


def _make_parent(fs: Any, target: str) -> None:
    parent = target.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)


def _remove_quietly(fs: Any, path: str) -> None:
    try:
        fs.rm(path)
    except (FileNotFoundError, OSError):
        pass
    except Exception as error:  # an object store's own errors: a stray part file is not worth failing for
        log.warning("Could not remove %s: %s", path, error)
