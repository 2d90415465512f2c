"""Make the connection list's *Test* button work for ``runcomfy`` connections (Airflow 3.3.2).

What goes wrong without this: the *Test* button of the connection list posts
the stored connection with ``"port": Number(null)``, i.e. ``"port": 0``, to
``POST /api/v2/connections/test``. A ``runcomfy`` connection has no port (the
form hides the field), so the API sees "port 0 differs from the stored port
NULL", refuses to reuse the stored (masked) token and answers 400 "The host or
port to test differs from the stored connection" -- every test fails. And the
test runs under a random connection id, so a message naming the connection
names ``'SR6FOyy1'``.

What this does, for ``runcomfy`` connections only: a pure ASGI middleware (no
effect on any other request) drops ``"port": 0`` from the test's body -- port 0
is no port anyone can connect to, and leaving it out is what the API reads as
"unchanged" -- and records the connection id the user is testing in
``hooks.tested_connection.TESTED_CONNECTION``, which ``RunComfyHook.test_connection``
reads to name it (the variable lives in the hook's layer: the plugin writes down to it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow_provider_runcomfy.hooks.tested_connection import TESTED_CONNECTION, tested_connection_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TEST_PATH = "/api/v2/connections/test"
#: A test body is a connection: a few KB. Larger bodies are passed on untouched.
MAX_BODY = 1_000_000

__all__ = ["TESTED_CONNECTION", "ConnectionTestFix", "fix_test_body", "tested_connection_id"]


def fix_test_body(body: bytes) -> tuple[bytes, str | None]:
    """``(body to pass on, connection id)``: a ``runcomfy`` test body without ``"port": 0``.

    Any other body (another connection type, not JSON) is returned unchanged with no id.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return body, None
    if not isinstance(data, dict) or data.get("conn_type") != "runcomfy":
        return body, None
    connection_id = data.get("connection_id") if isinstance(data.get("connection_id"), str) else None
    if data.get("port") == 0 and not isinstance(data.get("port"), bool):
        del data["port"]
        return json.dumps(data).encode(), connection_id
    return body, connection_id


class ConnectionTestFix:
    """ASGI middleware: see the module docstring. Every other request passes straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(TEST_PATH):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        connection_id = None
        if complete:
            body, connection_id = fix_test_body(body)
            scope = dict(scope)
            scope["headers"] = [
                (name, str(len(body)).encode() if name.lower() == b"content-length" else value)
                for name, value in scope["headers"]
            ]
        token = TESTED_CONNECTION.set(connection_id)
        try:
            await self.app(scope, _replay(body, receive, more=not complete), send)
        finally:
            TESTED_CONNECTION.reset(token)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, and whether all of it was read (False past ``MAX_BODY``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, *, more: bool) -> Receive:
    """A ``receive`` that first hands over ``body`` (the part already read), then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
