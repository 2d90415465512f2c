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

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client._limits import truncate
from airflow_provider_runcomfy.client.download import DEFAULT_MAX_OUTPUT_BYTES, OutputDownloader
from airflow_provider_runcomfy.client.errors import OutputStorageError, RunComfyError

# Where copies go and how a file is written whole live in ``files``; these names stay importable
# from here, where the operators, DAG examples and users have always found them.
from airflow_provider_runcomfy.outputs.files import (
    StoredOutput,
    check_writable,
    copy_output,
    remove_quietly,
    resolve_output_dir,
    run_directory,
    safe_segment,
    sha256_of,
    task_directory,
    write_atomically,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

__all__ = [
    "STATE_KEY",
    "OutputStore",
    "StoredOutput",
    "check_writable",
    "resolve_output_dir",
    "run_directory",
    "safe_segment",
    "sha256_of",
    "task_directory",
    "write_atomically",
]

log = logging.getLogger(__name__)

#: ``task_state_store`` key of the copies a task instance has made (kept across retries and clears).
STATE_KEY = "runcomfy_stored"


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
        copy = copy_output(
            downloader,
            self.directory,
            stem,
            url,
            label=f"Output {n} of RunComfy request {request_id}",
            request_id=request_id,
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
                remove_quietly(fs, str(name))


def _task_api_base_url(context: Any) -> str | None:
    """The API base URL of the running task's RunComfy hook (operators and the sensor have one)."""
    try:
        return str(context["task"].hook.client.base_url)
    except Exception:  # no task, no hook, no connection: the strict policy applies
        return None
