"""What the download tests share: sinks that remember what each attempt wrote and which were discarded."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager


class Sinks:
    """Sinks handed to the downloader, one per attempt, remembering which were discarded."""

    def __init__(self) -> None:
        self.opened: list[io.BytesIO] = []
        self.discarded: list[io.BytesIO] = []

    @contextmanager
    def open(self) -> Iterator[io.BytesIO]:
        sink = io.BytesIO()
        self.opened.append(sink)
        try:
            yield sink
        except BaseException:
            self.discarded.append(sink)
            raise

    @property
    def kept(self) -> bytes:
        (kept,) = [s for s in self.opened if s not in self.discarded]
        return kept.getvalue()
