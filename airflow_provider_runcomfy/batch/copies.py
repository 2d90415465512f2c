"""Copying one item's outputs into the batch's ``outputs/`` folder, the way single jobs are copied.

The bytes are streamed by ``client.download.OutputDownloader`` (capped, checked,
hashed, never authenticated) into a part file that is renamed once whole
(``outputs.storage``), under a name fixed by the item and its request::

    {task folder}/outputs/{index:06d}_{request_id}_{n}.{ext}

so a copy cut short by a crash is made again under the same name, never twice.
Called from worker threads: each thread has its own downloader.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client.download import OutputDownloader, OutputDownloadError, Sink
from airflow_provider_runcomfy.outputs.storage import StoredOutput, _move, _part_file, safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch.items import BatchItem
    from airflow_provider_runcomfy.batch.ledger import ItemRecord

_local = threading.local()


def _downloader(max_bytes: int, api_base_url: str | None) -> OutputDownloader:
    key = (max_bytes, api_base_url)
    if getattr(_local, "key", None) != key:
        # The URL policy depends on where the API is: http:// outputs only from a loopback emulator.
        _local.downloader, _local.key = OutputDownloader(max_bytes=max_bytes, api_base_url=api_base_url), key
    downloader: OutputDownloader = _local.downloader
    return downloader


def copy_item_outputs(
    folder: ObjectStoragePath, item: BatchItem, record: ItemRecord, max_bytes: int, api_base_url: str | None
) -> list[dict[str, Any]]:
    """Copy every output URL of ``record``'s outcome; the ``stored`` entries of the manifest."""
    request_id = str(record.request_id)
    urls = list((record.outcome or {}).get("outputs") or [])
    fs, root = folder.fs, folder.path
    stored = []
    for n, url in enumerate(urls):
        stem = f"{item.index:06d}_{safe_segment(request_id)}_{n}"
        parts: list[str] = []

        @contextmanager
        def open_part(stem: str = stem, parts: list[str] = parts) -> Iterator[Sink]:
            with _part_file(fs, f"{root}/{stem}") as (part, sink):
                parts.append(part)
                yield sink

        try:
            download = _downloader(max_bytes, api_base_url).download(url, open_part)
        except OutputDownloadError as error:
            raise type(error)(
                f"Output {n} of RunComfy request {request_id} (item {item.index}): {error.message}",
                status_code=error.status_code,
                retry_after=error.retry_after,
                request_id=request_id,
            ) from error
        name = f"{stem}.{download.extension}"
        _move(fs, parts[-1], f"{root}/{name}")
        stored.append(
            StoredOutput(
                uri=str(folder / name),
                source_url=url,
                bytes=download.bytes,
                sha256=download.sha256,
                content_type=download.content_type,
            ).as_dict()
        )
    return stored
