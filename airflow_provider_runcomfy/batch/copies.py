"""Copying one item's outputs into the batch's ``outputs/`` folder, the way single jobs are copied.

The bytes are streamed (capped, checked, hashed, never authenticated) into a part file that is
renamed once whole (``outputs.files``, as ``outputs.storage`` does), under a name fixed by the
item and its request::

    {task folder}/outputs/{index:06d}_{request_id}_{n}.{ext}

so a copy cut short by a crash is made again under the same name, never twice.

A pool of copies lives as long as a worker part: the copies started after a refill go on while
the worker waits for its next jobs and submits them, instead of holding up that wait (at 2 MB
per output, 150 items' copies took about a second of every 5 s cycle). Two kinds, one interface:

- ``LoopCopies``: one event loop on one thread (``client._aiodownload``), for a local disk.
  Eight copy threads took turns at the interpreter lock dozens of times per MB, with the
  worker's own thread too: 2 MB outputs cost 5.6 CPU-ms per MB on eight threads, 2.6 on one
  loop with eight downloads (``bench/copy_memory.py --threads 8 --loop``, side by side).
- ``ThreadCopies``: threads sharing one ``OutputDownloader``, for object stores, whose
  writes (uploads) block and would hold up a loop's other copies.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client._aiodownload import AsyncOutputDownloader
from airflow_provider_runcomfy.client.download import OutputDownloader
from airflow_provider_runcomfy.outputs.files import acopy_output, copy_output, is_local, safe_segment

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


def _stem(item: BatchItem, request_id: str, n: int) -> str:
    return f"{item.index:06d}_{safe_segment(request_id)}_{n}"


def _label(item: BatchItem, request_id: str, n: int) -> str:
    return f"Output {n} of RunComfy request {request_id} (item {item.index})"


def _urls(record: ItemRecord) -> list[str]:
    return list((record.outcome or {}).get("outputs") or [])


def copy_item_outputs(
    folder: ObjectStoragePath, item: BatchItem, record: ItemRecord, max_bytes: int, api_base_url: str | None
) -> list[dict[str, Any]]:
    """Copy every output URL of ``record``'s outcome; the ``stored`` entries of the manifest."""
    request_id = str(record.request_id)
    downloader = _downloader(max_bytes, api_base_url)
    return [
        copy_output(
            downloader,
            folder,
            _stem(item, request_id, n),
            url,
            label=_label(item, request_id, n),
            request_id=request_id,
        ).as_dict()
        for n, url in enumerate(_urls(record))
    ]


async def acopy_item_outputs(
    downloader: AsyncOutputDownloader, folder: ObjectStoragePath, item: BatchItem, record: ItemRecord
) -> list[dict[str, Any]]:
    """``copy_item_outputs`` on an event loop."""
    request_id = str(record.request_id)
    return [
        (
            await acopy_output(
                downloader,
                folder,
                _stem(item, request_id, n),
                url,
                label=_label(item, request_id, n),
                request_id=request_id,
            )
        ).as_dict()
        for n, url in enumerate(_urls(record))
    ]


#: One item's copy: its item, the record it was started from, and the copy's future.
Pending = tuple["BatchItem", "ItemRecord", "Future[list[dict[str, Any]]]"]


class CopyPool:
    """The copies of one worker part: at most ``concurrency`` at once.

    Only the worker's own thread starts copies and takes their results (``ended``): the ledger
    is written by that thread alone. A copy whose item is still being copied is not started
    twice. ``close`` gives up the copies not started yet and waits for the running ones; what
    they made without being recorded is made again, under the same names, by a later part.
    """

    def __init__(self, concurrency: int, folder: ObjectStoragePath, max_bytes: int, api_base_url: str | None):
        self.concurrency = concurrency
        self.folder, self.max_bytes, self.api_base_url = folder, max_bytes, api_base_url
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, todo: Sequence[tuple[BatchItem, ItemRecord]]) -> int:
        """Start copying each item of ``todo`` not being copied already; how many were started."""
        started = 0
        for item, record in todo:
            if item.key in self._pending:
                continue
            self._pending[item.key] = (item, record, self._submit(item, record))
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
        self._pending.clear()
        self._shut_down()

    def _submit(self, item: BatchItem, record: ItemRecord) -> Future[list[dict[str, Any]]]:
        raise NotImplementedError

    def _shut_down(self) -> None:
        raise NotImplementedError


class ThreadCopies(CopyPool):
    """Copies on ``concurrency`` threads sharing one ``OutputDownloader`` per process."""

    _pool: ThreadPoolExecutor | None = None

    def _submit(self, item: BatchItem, record: ItemRecord) -> Future[list[dict[str, Any]]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="runcomfy-copy")
        return self._pool.submit(
            copy_item_outputs, self.folder, item, record, self.max_bytes, self.api_base_url
        )

    def _shut_down(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


class LoopCopies(CopyPool):
    """Copies on one event loop in one thread, ``concurrency`` downloads at once."""

    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _downloader: AsyncOutputDownloader | None = None
    _gate: asyncio.Semaphore | None = None
    _closing = False

    def _submit(self, item: BatchItem, record: ItemRecord) -> Future[list[dict[str, Any]]]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="runcomfy-copies", daemon=True
            )
            self._thread.start()
            self._closing = False
        return asyncio.run_coroutine_threadsafe(self._copy(item, record), self._loop)

    async def _copy(self, item: BatchItem, record: ItemRecord) -> list[dict[str, Any]]:
        if self._gate is None:  # made in the loop, as the downloader's session must be
            self._gate = asyncio.Semaphore(self.concurrency)
            self._downloader = AsyncOutputDownloader(
                max_bytes=self.max_bytes, api_base_url=self.api_base_url, concurrency=self.concurrency
            )
        async with self._gate:
            if self._closing:  # given up: a later part makes it
                raise asyncio.CancelledError
            assert self._downloader is not None
            return await acopy_item_outputs(self._downloader, self.folder, item, record)

    def _shut_down(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing = True

        async def wind_up() -> None:
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            await asyncio.gather(*others, return_exceptions=True)
            if self._downloader is not None:
                await self._downloader.aclose()

        try:
            asyncio.run_coroutine_threadsafe(wind_up(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = self._downloader = self._gate = None


def copy_pool(
    concurrency: int, folder: ObjectStoragePath, max_bytes: int, api_base_url: str | None
) -> CopyPool:
    """The pool for ``folder``: one event loop on a local disk, threads on an object store."""
    kind = LoopCopies if is_local(folder.fs) else ThreadCopies
    return kind(concurrency, folder, max_bytes, api_base_url)
