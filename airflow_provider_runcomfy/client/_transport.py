"""The asyncio client's transport: httpx's API, aiohttp's connection pool underneath.

Why not httpx's own transport (httpcore): measured on 2 cores over HTTPS
(``bench/triggerer_scale.py``), a shared ``httpx.AsyncClient`` costs several
times the CPU per request of a shared ``aiohttp.ClientSession`` and, with
thousands of waiters, stalls (httpcore rescans and wakes every queued request
whenever a connection frees). aiohttp's HTTP parser is compiled and its pool
wakes one waiter at a time. So the client keeps speaking httpx (requests,
auth, timeouts, responses, exceptions) and only the bytes move through aiohttp,
as openai-python's ``httpx-aiohttp`` does.

This module is our own, small version of that idea, for one reason: the client
decides from an exception's type whether a request may have reached RunComfy
(a submit is repeated only when it provably did not), so every aiohttp error
must become the httpx error of the same meaning. ``httpx-aiohttp`` 0.2.0 turns
any ``ClientConnectionError`` -- a server that dropped the connection after
reading the request included -- into ``httpx.ConnectTimeout`` ("never sent").

Behind a proxy configured in the environment (``HTTPS_PROXY`` and friends) the
client keeps httpx's own transport, whose proxy handling is the one users
configured and tested; without one, aiohttp carries the requests.
"""

from __future__ import annotations

import os
import ssl
import threading
import urllib.request
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp
import httpx
from yarl import URL

#: Seconds an idle connection is kept for reuse (httpx's default).
KEEPALIVE_EXPIRY = 5.0


def async_http_client(
    options: Mapping[str, Any], *, max_connections: int
) -> tuple[httpx.AsyncClient, AiohttpTransport | None]:
    """An ``httpx.AsyncClient`` with ``options`` (base URL, auth, timeouts...), and its fast transport.

    The transport is ``None`` when a proxy is configured: the client then uses httpx's
    own transport and proxy support. SSL trust is httpx's either way: certifi's CA
    bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set.
    """
    limits = httpx.Limits(max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY)
    if uses_env_proxy():
        return httpx.AsyncClient(**options, limits=limits), None
    transport = AiohttpTransport(max_connections=max_connections)
    return httpx.AsyncClient(**options, transport=transport), transport


def uses_env_proxy() -> bool:
    """Whether the environment names a proxy (read as httpx reads it, with ``getproxies``)."""
    return any(scheme != "no" for scheme in urllib.request.getproxies())


_ssl_lock = threading.Lock()
_ssl_contexts: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}


def _ssl_context(verify: bool) -> ssl.SSLContext:
    """httpx's SSL context for ``verify``, built once per process and trust settings.

    Building one loads the CA bundle: about 30 ms of CPU. A batch's worker part makes a client
    for each refill and each wait (each ``asyncio.run`` has its own event loop, and an aiohttp
    session belongs to one), so built per client this was 37% of the samples of a worker part's
    main thread in a 2,000-item run (py-spy). An ``SSLContext`` may be shared by connections, sessions
    and threads; ``SSL_CERT_FILE``/``SSL_CERT_DIR`` are part of the key, as httpx reads them.
    """
    key = (bool(verify), os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _ssl_lock:
        context = _ssl_contexts.get(key)
        if context is None:
            context = _ssl_contexts[key] = httpx.create_ssl_context(verify=verify)
    return context


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one ``aiohttp.ClientSession`` (created in the running event loop).

    :param verify: as httpx's ``verify``: ``True`` (certifi, or ``SSL_CERT_FILE``), ``False``,
        or an ``ssl.SSLContext``.
    :param max_connections: the most connections open at once; the client sending through it
        lets no more requests in at once, and applies httpx's pool timeout to those it holds back.
    """

    def __init__(self, *, verify: ssl.SSLContext | bool = True, max_connections: int = 100) -> None:
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else _ssl_context(verify)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        # What aiohttp needs of a request, kept while the request lives: a waiting trigger sends
        # the same request object on every poll, so it is converted once, not once per poll.
        self._converted: weakref.WeakKeyDictionary[httpx.Request, _Converted] = weakref.WeakKeyDictionary()

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=self._ssl, limit=self._max_connections, keepalive_timeout=KEEPALIVE_EXPIRY
        )
        # No cookies and no decompression: httpx does both (or, for cookies, nothing) as before.
        session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )
        # aiohttp silently resends a GET once when a reused connection turns out closed; httpx
        # does not. The client's retry policy decides every repeat (and logs it), so switch that
        # off -- as aiohttp's own test client does, through the same attribute.
        session._retry_connection = False
        self._session = session
        return session

    def _timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        # httpx's connect and read timeouts are aiohttp's socket timeouts (connecting, TLS
        # included; each read). Its pool timeout is applied by the client, whose in-flight bound
        # admits no more requests than this transport has connections: aiohttp never queues one.
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=key[0], sock_read=key[1])
            self._timeouts[key] = timeout
        return timeout

    def _convert(self, request: httpx.Request) -> _Converted:
        """aiohttp's view of a request; a request is not changed once sent (ours never are)."""
        converted = self._converted.get(request)
        if converted is None:
            url = URL(str(request.url), encoded=True)  # httpx has already percent-encoded it
            timeout = self._timeout(request.extensions.get("timeout", {}))
            try:
                body = request.content or None
            except httpx.RequestNotRead:  # a streamed body can be sent once only: not kept
                return _Converted(url, request.headers.multi_items(), request.stream, timeout)
            converted = _Converted(url, request.headers.multi_items(), body, timeout)
            self._converted[request] = converted
        return converted

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        url, headers, body, timeout = self._convert(request)
        try:
            async with session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout,
                server_hostname=request.extensions.get("sni_hostname"),
            ) as response:
                # Read whole when it fits the client's cap (API answers are small JSON
                # documents); else only up to the cap, and the client refuses it. Raw bytes:
                # the client inflates them itself, with a bound.
                content = await _read_bounded(response, request.extensions.get("runcomfy_max_body"))
        except (aiohttp.ClientError, TimeoutError) as error:
            raise translate_error(error, request) from error
        except ValueError as error:
            # aiohttp refuses some requests with a bare ValueError (e.g. a line break in a
            # header value): the request never left. A ValueError escaping here would crash
            # the triggerer's task instead of failing one wait; its text may quote the header.
            raise httpx.LocalProtocolError(
                f"the request could not be sent ({type(error).__name__})", request=request
            ) from None
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=httpx.ByteStream(content),  # raw: the client inflates it (Content-Encoding), bounded
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode()},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_bounded(response: aiohttp.ClientResponse, limit: object) -> bytes:
    """The body, or its first ``limit``-and-a-bit bytes when it is longer (or ``limit`` is not an int)."""
    length = response.content_length
    if not isinstance(limit, int) or (length is not None and length <= limit):
        return await response.read()
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await response.content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class _Converted(NamedTuple):
    url: URL
    headers: list[tuple[str, str]]
    body: bytes | httpx.SyncByteStream | httpx.AsyncByteStream | None
    timeout: aiohttp.ClientTimeout


def translate_error(error: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception that means what ``error`` means, above all: did the request leave?

    ``ConnectError``/``ConnectTimeout`` say it never did (no connection was made, or the TLS
    handshake failed); every other error may come after the server read the request.
    """
    message = str(error) or type(error).__name__
    cls: type[httpx.TransportError]
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        cls = httpx.ConnectTimeout  # no connection within the pool/connect timeout
    elif isinstance(error, TimeoutError):
        cls = httpx.ReadTimeout  # SocketTimeoutError: no answer within the read timeout
    elif isinstance(error, aiohttp.ClientConnectorError | aiohttp.ServerFingerprintMismatch):
        cls = httpx.ConnectError  # refused, unresolvable, TLS handshake or certificate refused
    elif isinstance(error, aiohttp.ClientConnectionResetError):
        cls = httpx.WriteError  # the connection closed while the request was being written
    elif isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        cls = httpx.RemoteProtocolError  # as httpcore: no answer, or an answer cut short
    elif isinstance(error, aiohttp.ClientResponseError):
        cls = httpx.RemoteProtocolError  # an answer that is not valid HTTP
    elif isinstance(error, aiohttp.InvalidURL):
        cls = httpx.UnsupportedProtocol
    else:
        cls = httpx.ReadError  # e.g. a connection reset while reading the answer
    return cls(message, request=request)
