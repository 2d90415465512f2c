"""The answers the emulator gives besides the normal ones: RunComfy's errors and the planned faults.

``ApiError`` is one of RunComfy's documented errors. The rest are the
answers a ``Fault`` asks for: a chosen status and body, a broken body, a
compression bomb, a redirect, a connection cut before or during the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from airflow_provider_runcomfy.emulator import bombs, connections
from airflow_provider_runcomfy.emulator.faults import Fault

# The ASGI types, as starlette spells them: starlette is FastAPI's, not a dependency of ours.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ApiError(Exception):
    """One of RunComfy's documented errors: an HTTP status and a JSON body with ``error_code``."""

    def __init__(self, http_status: int, error_code: int, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message
        self.detail = detail

    def response(self) -> JSONResponse:
        """The answer RunComfy gives for this error."""
        body: dict[str, Any] = {"error_code": self.error_code, "error_message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return JSONResponse(body, status_code=self.http_status)


class DroppedConnection(Response):
    """A "response" that closes the connection without sending anything."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await connections.cut(scope)


class TruncatedResponse(Response):
    """Sends ``inner``'s status and headers (full ``Content-Length``), ``after_bytes`` bytes, then cuts."""

    def __init__(self, inner: Response, after_bytes: int) -> None:
        super().__init__(status_code=inner.status_code)
        self.raw_headers = inner.raw_headers
        self._inner = inner
        self._after_bytes = after_bytes

    async def _body(self) -> AsyncIterator[bytes]:
        if isinstance(self._inner, StreamingResponse):
            async for chunk in self._inner.body_iterator:
                yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        else:
            yield bytes(self._inner.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        remaining = self._after_bytes
        async for chunk in self._body():
            if remaining <= 0:
                break
            part = chunk[:remaining]
            remaining -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await connections.cut(scope)


async def aiter(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    """An async iterator over ``parts`` (what ``StreamingResponse`` wants)."""
    for part in parts:
        yield part


def http_answer(fault: Fault) -> Response:
    """The answer of an ``http`` fault: its status, extra headers, and a JSON error body if it has one."""
    assert fault.status is not None
    headers = dict(fault.headers or {})
    if fault.retry_after is not None:
        headers.setdefault("Retry-After", f"{fault.retry_after:g}")
    if fault.error_code is None and fault.error_message is None:
        return Response(status_code=fault.status, headers=headers)
    body: dict[str, Any] = {}
    if fault.error_code is not None:
        body["error_code"] = fault.error_code
    body["error_message"] = fault.error_message or f"emulated HTTP {fault.status}"
    return JSONResponse(body, status_code=fault.status, headers=headers)


def replacing_answer(fault: Fault) -> Response | None:
    """The answer of a fault that replaces the handler's (nothing else is done); ``None`` for others."""
    if fault.kind == "http":
        return http_answer(fault)
    if fault.kind == "error_200":
        message = fault.error_message or "emulated error"
        return JSONResponse({"error_code": fault.error_code, "error_message": message})
    if fault.kind == "redirect":
        assert fault.location is not None
        return Response(status_code=302, headers={**(fault.headers or {}), "Location": fault.location})
    if fault.kind in ("gzip_bomb", "zlib_bomb", "png_bomb"):
        return bomb_answer(fault)
    return None


def bad_body_answer(fault: Fault) -> Response:
    """A ``bad_body`` fault's answer: its status, content type and raw body, sent as they are."""
    assert fault.status is not None
    assert fault.body is not None
    headers = dict(fault.headers or {})
    return Response(
        fault.body.encode(), status_code=fault.status, media_type=fault.content_type, headers=headers
    )


def bomb_answer(fault: Fault) -> Response:
    """200 with a compression bomb (cached, streamed) that inflates to ``fault.size`` bytes."""
    assert fault.size is not None
    headers = dict(fault.headers or {})
    if fault.kind == "gzip_bomb":
        body, media_type = bombs.gzip_bomb(fault.size), "image/png"
        headers["Content-Encoding"] = "gzip, gzip"
    elif fault.kind == "zlib_bomb":
        body, media_type = bombs.zlib_bomb(fault.size), "image/png"
        headers["Content-Encoding"] = "deflate"
    else:
        body, media_type = bombs.png_bomb(fault.size), "image/png"
    headers["Content-Length"] = str(len(body))
    return StreamingResponse(aiter(bombs.pieces(body)), media_type=media_type, headers=headers)
