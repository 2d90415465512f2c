"""One asyncio client per RunComfy account and event loop, shared by every wait in it.

A triggerer runs the triggers of all deferred tasks in one process and one
event loop. Giving each its own client would mean a connection pool, an SSL
context and fresh TLS handshakes per trigger (and, with httpx's own pool, a
pool that stalls under thousands of waiters); instead every wait on the same
account borrows one ``AsyncRunComfyClient`` for as long as it runs:

- **keyed** by the event loop (a client's connections belong to one loop), a
  name (the Airflow connection id) and the full client settings -- base URL,
  token, timeouts, retry policy, in-flight bound -- so a connection whose token
  or host changed gets a new client while waits that started earlier finish on
  the old one.
  The token is part of the key only in memory; nothing here logs or shows it.
- **created lazily** by the first wait, **closed** when the last one ends.
- **bounded**: the client lets at most ``max_in_flight`` requests on the wire;
  the rest queue on a semaphore, so a burst of polls cannot swamp the pool.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from airflow_provider_runcomfy.client._base import ClientSettings
from airflow_provider_runcomfy.client._client import DEFAULT_MAX_IN_FLIGHT, AsyncRunComfyClient

log = logging.getLogger("airflow_provider_runcomfy.client")

_Key = tuple[str, ClientSettings, int]


@dataclass
class _Shared:
    client: AsyncRunComfyClient
    users: int = 0


# Per event loop: a loop that is gone takes its clients with it (its connections are dead anyway).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, _Shared]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def shared_client(
    name: str, token: str, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, **settings: Any
) -> AsyncIterator[AsyncRunComfyClient]:
    """Borrow the running loop's client for ``name`` with these settings; the last to leave closes it.

    :param name: what the client is for, e.g. the Airflow connection id.
    :param token: the API token.
    :param max_in_flight: the bound on requests on the wire, for a client this call creates.
    :param settings: the other ``AsyncRunComfyClient`` arguments (``base_url``, timeouts, ``retry``...).
    """
    key = (name, ClientSettings.create(token, **settings), max_in_flight)  # validated before it is shared
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    shared = clients.get(key)
    if shared is None:
        shared = clients[key] = _Shared(AsyncRunComfyClient(token, max_in_flight=max_in_flight, **settings))
    shared.users += 1
    try:
        yield shared.client
    finally:
        shared.users -= 1
        if shared.users == 0:
            # Forget it first, so that a wait starting while it closes gets a fresh client.
            if clients.get(key) is shared:
                del clients[key]
            try:
                await shared.client.aclose()
            except Exception as error:  # the wait's outcome is known: a failed close must not hide it
                log.warning("Closing the shared RunComfy client for %s failed: %s", name, error)


@dataclass(frozen=True)
class SharedClientInfo:
    """What ``shared_clients`` tells about one shared client (never its token)."""

    name: str
    base_url: str
    users: int
    client: AsyncRunComfyClient


def shared_clients() -> list[SharedClientInfo]:
    """The running loop's shared clients and how many waits use each (for tests and diagnostics)."""
    clients = _clients.get(asyncio.get_running_loop(), {})
    return [
        SharedClientInfo(name, settings.base_url, shared.users, shared.client)
        for (name, settings, _), shared in clients.items()
    ]
