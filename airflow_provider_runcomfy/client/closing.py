"""``Closing``: the ``with`` statement for the objects that hold connections or threads.

The client, the output downloader, the input pre-flight and the input preparer each
own something to release; ``with`` releases it, and so does calling ``close()``.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from typing import Any, Protocol, Self, TypeVar


class Closing:
    """``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out, even after an error."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the object holds; a subclass says what that is."""
        raise NotImplementedError


class _Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=_Closable)


def close_all(lock: threading.Lock, held: MutableMapping[Any, _C]) -> None:
    """Empty ``held`` under ``lock``, then close what it held, outside the lock.

    Closing a connection pool can block on the network; doing it under the lock would stall
    every thread that only wanted to borrow one.
    """
    with lock:
        closing = list(held.values())
        held.clear()
    for one in closing:
        one.close()
