"""Output downloads on one event loop: ``download.OutputDownloader``'s rules, with aiohttp reading.

Why a second reader: a batch copies many outputs at once. On threads (``OutputDownloader``),
eight copies that each receive, hash and write hand the interpreter lock to each other dozens of
times per MB; at 2 MB per output that doubled the CPU of a copy. One event loop keeps as many
downloads going with one thread, and aiohttp parses HTTP in C (``bench/copy_memory.py --threads
1,8 --loop``: 5.6 CPU-ms per MB on eight threads, 2.7 on one, 2.6 on one loop of eight).

The rules are the same, and mostly the same code:

- every hop passes the URL policy (``_urlpolicy.checked``), redirects are followed here
  (``redirect_target``), never by aiohttp;
- the connection goes to the addresses the policy checked: the session's resolver answers a
  checked host with those addresses only (``_PinnedResolver``), never with a lookup of its own;
- the answer is judged by ``download.Answer`` (status, type, announced size) and its body by
  ``download.Body`` (the cap, bounded decoding, the deadline), before and while it is written;
- no cookies, no credentials, no ``.netrc`` or proxy settings read by aiohttp: a proxy is
  used only where the environment names one for that URL (``proxy_for``, as the threads do);
- retries by the same ``RetryPolicy``, each attempt in a fresh sink.

Used where the sink's writes are quick and local (a batch's ``outputs/`` on a local disk):
a write here holds the whole loop, so an object store's uploads stay on threads. The policy's
host lookups run on the loop's thread too (``socket.getaddrinfo``, once a minute per host:
``CachingResolver``); a slow one holds the other copies for that long, never the worker.
This module knows nothing of Airflow.
"""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from tenacity import AsyncRetrying
from yarl import URL

from airflow_provider_runcomfy.arguments import check_max_output_bytes
from airflow_provider_runcomfy.client._media import shown_url
from airflow_provider_runcomfy.client._transport import _ssl_context
from airflow_provider_runcomfy.client._urlpolicy import (
    MAX_REDIRECTS,
    REDIRECTS,
    CachingResolver,
    UrlPolicy,
    checked,
    proxy_for,
    redirect_target,
    resolve,
    too_many_redirects,
)
from airflow_provider_runcomfy.client.download import (
    _HEADERS,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_SECONDS,
    DOWNLOAD_ATTEMPTS,
    Answer,
    Body,
    Download,
    OpenSink,
    _check_deadline,
    broke_off,
)
from airflow_provider_runcomfy.client.retry import RetryPolicy

#: Bytes aiohttp may hold for one answer before it stops reading the socket; 64 KiB (its default)
#: made four times as many pieces to count, hash and write.
READ_BUFFER = 1 << 20


class _PinnedResolver(AbstractResolver):
    """Answers a host the policy checked with the addresses it checked; other hosts (a proxy,
    the emulator's own loopback name) as the system would."""

    def __init__(self) -> None:
        self.pins: dict[str, list[str]] = {}
        self._system = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        pinned = self.pins.get(host.lower())
        if pinned is None:
            return await self._system.resolve(host, port, family)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in pinned
        ]

    async def close(self) -> None:
        await self._system.close()


class AsyncOutputDownloader:
    """``OutputDownloader`` on an event loop: made, used and closed (``aclose``) in one loop.

    The parameters are ``OutputDownloader``'s; ``concurrency`` is the most connections open at once.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        attempts: int = DOWNLOAD_ATTEMPTS,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        api_base_url: str | None = None,
        concurrency: int = 8,
    ) -> None:
        self.max_bytes = check_max_output_bytes(max_bytes)
        self.max_seconds = float(max_seconds)
        self.retry = RetryPolicy(max_attempts=max(1, attempts), max_total=self.max_seconds)
        self.policy = UrlPolicy(api_base_url, CachingResolver(resolve, failure_ttl=0))
        self._resolver = _PinnedResolver()
        # Read once, as httpx and aiohttp read the environment when a client is made.
        self._proxies = urllib.request.getproxies()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=concurrency, resolver=self._resolver, use_dns_cache=False, ssl=_ssl_context(True)
            ),
            headers=_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,  # ``Body`` inflates, with a bound
            trust_env=False,  # no .netrc credentials; proxies as ``proxy_for`` says
            read_bufsize=READ_BUFFER,
        )

    async def aclose(self) -> None:
        await self._session.close()

    async def download(self, url: str, open_sink: OpenSink) -> Download:
        """``OutputDownloader.download``, awaited."""
        checked(self.policy, url, None, "the output")
        deadline = time.monotonic() + self.max_seconds
        retrying = AsyncRetrying(
            **self.retry.tenacity_kwargs(idempotent=True, what=f"download of {shown_url(url)}")
        )
        download: Download = await retrying(self._attempt, url, open_sink, deadline)
        return download

    async def _attempt(self, url: str, open_sink: OpenSink, deadline: float) -> Download:
        try:
            response = await self._open(url, deadline)
            try:
                answer = Answer.check(url, response.status, response.headers, self.max_bytes)
                with open_sink() as sink:
                    body = Body(url, response.headers, self.max_bytes, deadline, self.max_seconds)
                    digest, size = hashlib.sha256(), 0
                    async for chunk in response.content.iter_any():
                        for piece in body.feed(chunk):
                            size += len(piece)
                            digest.update(piece)
                            sink.write(piece)
                    for piece in body.finish():
                        size += len(piece)
                        digest.update(piece)
                        sink.write(piece)
                    answer.check_whole(size)
            finally:
                response.release()
        except (TimeoutError, aiohttp.ClientError) as error:
            # Includes a body cut short (``ClientPayloadError``) and a read that timed out.
            raise broke_off(url, error) from None
        return answer.download(size, digest)

    async def _open(self, url: str, deadline: float) -> aiohttp.ClientResponse:
        """The answer to ``url``, redirects followed here, each hop checked and pinned like the first."""
        current, previous = url, None
        for _ in range(MAX_REDIRECTS + 1):
            _check_deadline(url, deadline, self.max_seconds)
            addresses = checked(self.policy, current, previous, "the output")
            target = URL(current, encoded=current.isascii())  # a pre-signed URL goes as it was signed
            if addresses and target.host:
                self._resolver.pins[target.host.lower()] = addresses
            response = await self._session.get(
                target, allow_redirects=False, proxy=proxy_for(current, self._proxies)
            )
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location:
                return response
            response.release()
            previous, current = current, redirect_target(url, current, location, "the output")
        raise too_many_redirects(url, "the output")
