"""Cutting a client's connection on purpose, which ASGI has no message for.

A ``drop`` fault closes the connection without an answer and a
``truncate`` fault closes it halfway through the body. ASGI cannot say
"close", so the emulator serves with uvicorn's HTTP protocol subclassed
(uvicorn's documented ``http=`` setting takes a protocol class) to keep
each connection's asyncio transport, which asyncio hands every protocol in
``connection_made``. A request finds its own by the ``server`` and
``client`` addresses of its ASGI scope; nothing of uvicorn's request
internals is touched. Under another ASGI server (e.g. httpx's
``ASGITransport``) no transport is known and the request fails with an
exception instead, which a client sees as a transport error too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

_Key = tuple[tuple[str, int], tuple[str, int]]


class _Open:
    __slots__ = ("closed", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.closed = asyncio.Event()


#: The open connections of every emulator in this process, by (server address, client address).
_OPEN: dict[_Key, _Open] = {}


def _key(transport: asyncio.BaseTransport) -> _Key | None:
    server, client = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
    if not (isinstance(server, tuple) and isinstance(client, tuple)):
        return None
    return (str(server[0]), int(server[1])), (str(client[0]), int(client[1]))


def protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11), noting each connection's transport."""
    base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class TrackedProtocol(base):
        _tracked_key: _Key | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._tracked_key = _key(transport)
            if self._tracked_key is not None:
                _OPEN[self._tracked_key] = _Open(transport)
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._tracked_key is not None and (entry := _OPEN.pop(self._tracked_key, None)):
                entry.closed.set()
            super().connection_lost(exc)

    return TrackedProtocol


async def cut(scope: Mapping[str, Any]) -> None:
    """Close the connection ``scope`` arrived on, after what was sent, and wait until the server noticed.

    Raises ``ConnectionAbortedError`` when the connection is unknown (another ASGI server).
    """
    server, client = scope.get("server"), scope.get("client")
    entry = None
    if server and client:
        entry = _OPEN.get(((str(server[0]), int(server[1])), (str(client[0]), int(client[1]))))
    if entry is None:
        raise ConnectionAbortedError("emulated fault: connection closed without a complete answer")
    entry.transport.close()
    # connection_lost runs on a later loop iteration; after it the server sends nothing more.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(entry.closed.wait(), timeout=1.0)
