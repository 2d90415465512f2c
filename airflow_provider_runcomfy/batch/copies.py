"""Copying one item's outputs into the batch's ``outputs/`` folder, the way single jobs are copied.

The bytes are streamed by ``client.download.OutputDownloader`` (capped, checked,
hashed, never authenticated) into a part file that is renamed once whole
(``outputs.files``, as ``outputs.storage`` does), under a name fixed by the item and its request::

    {task folder}/outputs/{index:06d}_{request_id}_{n}.{ext}

so a copy cut short by a crash is made again under the same name, never twice.
Called from worker threads, which share one downloader (its connections) per process.

``CopyPool`` keeps those threads for a whole worker part: the copies started after a refill go
on while the worker waits for its next jobs, instead of holding up that wait (at 2 MB per
output, 150 items' copies took about a second of every 5 s cycle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


#: One item's copy: its item, the record it was started from, and the copy's future.
Pending = tuple["BatchItem", "ItemRecord", "Future[list[dict[str, Any]]]"]


class CopyPool:
    """The copy threads of one worker part, and the copies they are making.

    Only the worker's own thread starts copies and takes their results (``ended``): the ledger
    is written by that thread alone. A copy whose item is still being copied is not started
    twice. ``close`` gives up the copies not started yet and waits for the running ones; what
    they made without being recorded is made again, under the same names, by a later part.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(
        self,
        todo: Sequence[tuple[BatchItem, ItemRecord]],
        copy: Callable[[BatchItem, ItemRecord], list[dict[str, Any]]],
    ) -> int:
        """Start ``copy`` for each item of ``todo`` not being copied already; how many were started."""
        started = 0
        for item, record in todo:
            if item.key in self._pending:
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="runcomfy-copy")
            self._pending[item.key] = (item, record, self._pool.submit(copy, item, record))
            started += 1
        return started

    def ended(self, *, wait: bool) -> Iterator[Pending]:
        """The copies that ended, in input order; with ``wait``, every copy, each once it ends."""
        for key, (item, record, future) in sorted(self._pending.items(), key=lambda kv: kv[1][0].index):
            if wait or future.done():
                future.exception()  # waits for it
                del self._pending[key]
                yield item, record, future

    def close(self) -> None:
        """Drop the copies not started, wait for the running ones, end the threads."""
        pool, self._pool = self._pool, None
        self._pending.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
