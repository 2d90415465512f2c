"""The journal: every API and file request the emulator received, and what it answered.

It is what tests assert on ("exactly one submit"), so recording is an
O(1) append under a lock and reads return copies a test can keep while
the server records on.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class JournalEntry:
    """One API or file request the emulator received, and what it answered."""

    endpoint: str
    """``submit``, ``status``, ``result``, ``cancel``, ``model``, ``file`` or ``sample``."""
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Request headers, names lowercased (``authorization`` included: it is the emulator's own token)."""
    json: Any
    """The JSON body, or ``None`` (no body, or not JSON)."""
    status_code: int | None
    """The HTTP status answered; ``None`` when the connection was dropped (or not answered yet)."""
    request_id: str | None
    at: float
    """``time.time()`` when the request arrived."""
    model_id: str | None = None
    fault: str | None = None
    """The kind of fault that hit this request, if one did."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the admin API."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalEntry:
        """The inverse of ``to_dict``."""
        return cls(**data)


class Journal:
    """The requests the emulator received, oldest first: what tests assert on.

    Reads return copies, so a test can hold on to them while the server
    keeps recording. Admin (``/_emulator/``) calls are never recorded.
    """

    def __init__(self, entries: list[JournalEntry] | None = None) -> None:
        self._entries = list(entries or [])
        self._lock = threading.Lock()

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Append ``entry`` (the server fills in its ``status_code`` once known)."""
        with self._lock:
            self._entries.append(entry)
        return entry

    @property
    def entries(self) -> list[JournalEntry]:
        """A copy of every entry."""
        return self.of()

    def of(self, endpoint: str | None = None, *, request_id: str | None = None) -> list[JournalEntry]:
        """Copies of the entries of ``endpoint`` (all when ``None``), optionally only about ``request_id``."""
        with self._lock:
            found = [
                e
                for e in self._entries
                if (endpoint is None or e.endpoint == endpoint)
                and (request_id is None or e.request_id == request_id)
            ]
        return [dataclasses.replace(e) for e in found]

    def count(self, endpoint: str | None = None, *, request_id: str | None = None) -> int:
        """How many requests ``of(endpoint, request_id=...)`` holds (without copying them)."""
        with self._lock:
            return sum(
                1
                for e in self._entries
                if (endpoint is None or e.endpoint == endpoint)
                and (request_id is None or e.request_id == request_id)
            )

    def last(self, endpoint: str | None = None) -> JournalEntry | None:
        """The most recent entry of ``endpoint``, or ``None``."""
        with self._lock:
            for entry in reversed(self._entries):
                if endpoint is None or entry.endpoint == endpoint:
                    return dataclasses.replace(entry)
        return None

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> JournalEntry:
        with self._lock:
            return dataclasses.replace(self._entries[index])

    def __repr__(self) -> str:
        return f"Journal({[f'{e.method} {e.path} -> {e.status_code}' for e in self.entries]})"
