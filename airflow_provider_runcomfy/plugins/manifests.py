"""Batch manifests as the view reads them: indexed once per change, then read a line at a time.

A batch of 56,000 inputs writes a 20 MB ``manifest.jsonl``; a run may hold several. A
gallery page shows 12 lines, its filter pills need three counts, its summary the costs.
So a manifest is read whole once per change of the file -- known by its size and its
modification time (or ETag) -- into a ``ManifestIndex``: where each line starts, each
line's outcome and cost (about 17 bytes a line, 1 MB for 56,000). A page then reads only
its own lines, by seeking to them. Nothing keeps the lines themselves.

The batch engineer's manifest may gain fields: a line is read for ``status`` and
``cost_usd`` only here, anything else is ignored, and a line that is not a JSON object
counts as failed (it is shown, with the reason, rather than breaking the page).
"""

from __future__ import annotations

import json
import logging
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Outcome codes of a line in ``ManifestIndex.outcomes``.
SUCCEEDED, FAILED, OTHER = 0, 1, 2
#: Manifest statuses that end without outputs (``batch.report.STATUSES`` less success and in-flight).
_FAILED_STATUSES = frozenset({"failed", "cancelled", "invalid", "unknown", "not_submitted"})
#: Manifests indexed at most per API server process (each about 1 MB per 56,000 lines).
MAX_INDEXED = 32
#: The largest manifest indexed (bytes); a larger one is streamed by the "Manifest" link only.
MAX_INDEXED_BYTES = 2_000_000_000
#: The longest line read for a page (a line holding a huge error text is cut there).
MAX_LINE_BYTES = 4_000_000


@dataclass
class ManifestIndex:
    """Where each non-blank line of a manifest starts, its outcome and its cost (NaN: none)."""

    signature: tuple[Any, ...]
    offsets: array = field(default_factory=lambda: array("q"))
    outcomes: bytearray = field(default_factory=bytearray)
    costs: array = field(default_factory=lambda: array("d"))
    #: Positions (in ``offsets``) of the succeeded and of the failed lines, for filtered pages.
    succeeded: array = field(default_factory=lambda: array("l"))
    failed: array = field(default_factory=lambda: array("l"))
    cost_usd: float | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def positions(self, show: str) -> range | array:
        """The positions of the lines ``show`` (``all``, ``succeeded``, ``failed``) selects."""
        if show == "succeeded":
            return self.succeeded
        if show == "failed":
            return self.failed
        return range(len(self.offsets))

    def count(self, show: str) -> int:
        return len(self.positions(show))


def outcome_of(record: Any) -> int:
    """``SUCCEEDED``, ``FAILED`` or ``OTHER`` (still running) of a manifest line."""
    status = record.get("status") if isinstance(record, Mapping) else "failed"
    if status == "succeeded":
        return SUCCEEDED
    return FAILED if status in _FAILED_STATUSES or not isinstance(status, str) else OTHER


def cost_of(record: Any) -> float | None:
    cost = record.get("cost_usd", record.get("cost")) if isinstance(record, Mapping) else None
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


def build_index(lines: Iterable[bytes], signature: tuple[Any, ...]) -> ManifestIndex:
    """Index a manifest's raw lines (each with its line ending), read once, in order."""
    index = ManifestIndex(signature)
    offset = 0
    total, costed = 0.0, False
    nan = float("nan")
    for raw in lines:
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        outcome = outcome_of(record)
        position = len(index.offsets)
        index.offsets.append(start)
        index.outcomes.append(outcome)
        if outcome == SUCCEEDED:
            index.succeeded.append(position)
        elif outcome == FAILED:
            index.failed.append(position)
        cost = cost_of(record)
        index.costs.append(nan if cost is None else cost)
        if cost is not None:
            total, costed = total + cost, True
    index.cost_usd = round(total, 6) if costed else None
    return index


class ManifestCache:
    """Indexes of the manifests the view shows, each rebuilt only when its file changed.

    Thread-safe: the API server answers pages in worker threads; two requests for one
    manifest that changed share one rebuild.
    """

    def __init__(self, max_entries: int = MAX_INDEXED) -> None:
        self._entries: OrderedDict[str, ManifestIndex] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        #: How many times a manifest was read whole (tests and the bench read it).
        self.builds = 0

    def index(self, uri: str) -> ManifestIndex:
        """The index of ``uri``, rebuilt if its size or modification time changed since."""
        fs, path = _open_fs(uri)
        signature = _signature(fs, path)
        with self._lock:
            found = self._entries.get(uri)
            if found is not None and found.signature == signature:
                self._entries.move_to_end(uri)
                return found
            building = self._building.setdefault(uri, threading.Lock())
        with building:
            with self._lock:
                found = self._entries.get(uri)
            if found is None or found.signature != signature:
                if signature[0] is not None and signature[0] > MAX_INDEXED_BYTES:
                    raise ValueError(f"the manifest is larger than {MAX_INDEXED_BYTES} bytes")
                with fs.open(path, "rb") as file:
                    found = build_index(file, signature)
                self.builds += 1
                log.info("Indexed %s lines of the manifest %s", len(found), uri.rsplit("/", 3)[-3:])
            with self._lock:
                self._entries[uri] = found
                self._entries.move_to_end(uri)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        return found

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def read_lines(uri: str, index: ManifestIndex, positions: Iterable[int]) -> list[tuple[int, dict[str, Any]]]:
    """``(position, record)`` of the lines at ``positions``, read by seeking (one open file)."""
    fs, path = _open_fs(uri)
    found: list[tuple[int, dict[str, Any]]] = []
    with fs.open(path, "rb") as file:
        for position in positions:
            file.seek(index.offsets[position])
            raw = file.readline(MAX_LINE_BYTES)
            try:
                record = json.loads(raw)
            except ValueError:
                record = {"status": "failed", "error": "this manifest line is not valid JSON"}
            found.append((position, record if isinstance(record, dict) else {"status": "failed"}))
    return found


def _open_fs(uri: str) -> tuple[Any, str]:
    from airflow_provider_runcomfy.outputs.files import storage_path

    path = storage_path(uri, argument="the manifest", access="read", fsspec_fallback=False)
    return path.fs, path.path


def _signature(fs: Any, path: str) -> tuple[Any, ...]:
    """What changes when the file does: its size and modification time (or ETag, on object stores)."""
    info = fs.info(path)
    size = info.get("size")
    changed = next(
        (
            info[key]
            for key in ("mtime", "LastModified", "last_modified", "ETag", "etag", "md5Hash")
            if key in info
        ),
        None,
    )
    return (size, str(changed))


#: The API server's one cache.
MANIFESTS = ManifestCache()
