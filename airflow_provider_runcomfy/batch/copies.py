"""Copying one item's outputs into the batch's ``outputs/`` folder, the way single jobs are copied.

The bytes are streamed by ``client.download.OutputDownloader`` (capped, checked,
hashed, never authenticated) into a part file that is renamed once whole
(``outputs.files``, as ``outputs.storage`` does), under a name fixed by the item and its request::

    {task folder}/outputs/{index:06d}_{request_id}_{n}.{ext}

so a copy cut short by a crash is made again under the same name, never twice.
Called from worker threads, which share one downloader (its connections) per process.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client.download import OutputDownloader
from airflow_provider_runcomfy.outputs.files import copy_output, safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch.items import BatchItem
    from airflow_provider_runcomfy.batch.ledger import ItemRecord

_lock = threading.Lock()
_downloaders: dict[tuple[int, str | None], OutputDownloader] = {}


def _downloader(max_bytes: int, api_base_url: str | None) -> OutputDownloader:
    """One downloader per process and settings, shared by the copy threads of every worker part's loop.

    Its connection pool is thread-safe (``Opener``) and costs ~30 ms of CPU to build (an SSL
    context): built per thread of each copy round, that was a fifth of a batch's copy time.
    """
    key = (max_bytes, api_base_url)  # the URL policy depends on where the API is
    with _lock:
        downloader = _downloaders.get(key)
        if downloader is None:
            downloader = _downloaders[key] = OutputDownloader(max_bytes=max_bytes, api_base_url=api_base_url)
    return downloader


def copy_item_outputs(
    folder: ObjectStoragePath, item: BatchItem, record: ItemRecord, max_bytes: int, api_base_url: str | None
) -> list[dict[str, Any]]:
    """Copy every output URL of ``record``'s outcome; the ``stored`` entries of the manifest."""
    request_id = str(record.request_id)
    urls = list((record.outcome or {}).get("outputs") or [])
    downloader = _downloader(max_bytes, api_base_url)
    return [
        copy_output(
            downloader,
            folder,
            f"{item.index:06d}_{safe_segment(request_id)}_{n}",
            url,
            label=f"Output {n} of RunComfy request {request_id} (item {item.index})",
            request_id=request_id,
        ).as_dict()
        for n, url in enumerate(urls)
    ]
