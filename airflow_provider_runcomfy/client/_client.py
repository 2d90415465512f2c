"""``RunComfyClient`` and ``AsyncRunComfyClient``: the RunComfy Model API in plain Python.

The twins share every decision through ``_base`` (what a call is, how its
answer reads), ``retry`` (when it is repeated) and ``_wait`` (how a job is
waited for); each only adds its own way of doing I/O and sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Self

import httpx
from tenacity import AsyncRetrying, Retrying

from airflow_provider_runcomfy.client import _base
from airflow_provider_runcomfy.client._answers import Answer, BodyReader, parse_response, transport_error
from airflow_provider_runcomfy.client._base import RAW_SLACK, Call, ClientSettings
from airflow_provider_runcomfy.client._wait import StatusCallback, Watch
from airflow_provider_runcomfy.client.closing import Closing
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.client.models import (
    CancelResponse,
    ModelInfo,
    RequestResult,
    RequestStatus,
    SubmitResponse,
)
from airflow_provider_runcomfy.policy import MAX_CONSECUTIVE_POLL_ERRORS

#: The most requests one asyncio client has on the wire at once (and so the most connections it
#: opens: each TLS connection holds ~300 KB); more wait their turn on a semaphore, woken one at a
#: time. 64 in flight carry ~640 polls/s at 100 ms per request (3,200 waits polled every 5 s).
DEFAULT_MAX_IN_FLIGHT = 64


class _ClientBase:
    settings: ClientSettings

    def __init__(self, token: str, **settings: Any) -> None:
        # The keywords (base_url, timeouts, retry, credential_hint) are ``ClientSettings.create``'s,
        # documented on the two clients; an unknown one is a TypeError there.
        self.settings = ClientSettings.create(token, **settings)

    @property
    def base_url(self) -> str:
        """The API's base URL (never carries the token)."""
        return self.settings.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class RunComfyClient(Closing, _ClientBase):
    """Blocking client, for a worker that submits, polls or cancels.

    :param token: the RunComfy API token (sent only to ``base_url``'s origin).
    :param base_url: defaults to ``https://model-api.runcomfy.net``; ``http://`` only on loopback.
    :param connect_timeout: seconds to wait for a connection.
    :param read_timeout: seconds to wait for an answer.
    :param retry: the retry policy of idempotent calls (and of submits that never left).
    :param credential_hint: where the token comes from, named in authentication errors.
    """

    def __init__(self, token: str, **kwargs: Any) -> None:
        super().__init__(token, **kwargs)
        self._http = httpx.Client(**self.settings.httpx_options())

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, model_id: str, payload: Mapping[str, Any]) -> SubmitResponse:
        """Start a job (paid). Never retried once the request may have reached RunComfy."""
        return self._send(_base.submit_call(model_id, payload))

    def get_status(self, request_id: str) -> RequestStatus:
        """Read a job's current state."""
        return self._send(_base.status_call(request_id))

    def get_result(self, request_id: str, *, include_cost: bool = True) -> RequestResult:
        """Read a job's outcome and outputs (or its state while unfinished), with its cost."""
        return self._send(_base.result_call(request_id, include_cost))

    def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a job that is still queued; a running job finishes and is billed."""
        return self._send(_base.cancel_call(request_id))

    def get_model(self, model_id: str) -> ModelInfo:
        """Read a model's description and price."""
        return self._send(_base.model_call(model_id))

    def wait_for_result(
        self,
        request_id: str,
        *,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        on_status: StatusCallback | None = None,
        max_consecutive_errors: int = MAX_CONSECUTIVE_POLL_ERRORS,
    ) -> RequestResult:
        """Poll until the job is finished and return its result (succeeded, failed or cancelled).

        Raises ``JobTimeoutError`` after ``deadline`` (a ``time.time()`` value).
        """
        watch = Watch(request_id, poll_interval, deadline, max_consecutive_errors, on_status)
        while True:
            try:
                if watch.observe(self.get_status(request_id)):
                    result = self.get_result(request_id)
                    if watch.is_final(result):
                        return result
            except RunComfyError as error:
                watch.failed(error)
            time.sleep(watch.next_sleep())

    def _send(self, call: Call) -> Any:
        policy = self.settings.retry.tenacity_kwargs(idempotent=call.idempotent, what=call.what)
        for attempt in Retrying(**policy):
            with attempt:
                return self._send_once(call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _send_once(self, call: Call) -> Any:
        sent_at = None if call.idempotent else datetime.now(UTC)
        try:
            # Streamed: the body is counted (inflated) against the call's cap as it arrives.
            with self._http.stream(call.method, call.path, json=call.json, params=call.params) as response:
                reader = BodyReader(call, response)
                for chunk in response.iter_raw():
                    if not reader.feed(chunk):
                        break  # leaving the block closes the connection: the rest is never read
        except httpx.TransportError as error:
            raise transport_error(call, error, self.settings, sent_at) from None
        return parse_response(call, reader.answer(), self.settings, sent_at)


class AsyncRunComfyClient(_ClientBase):
    """Asyncio client, for triggers: the same calls as ``RunComfyClient``, awaited.

    It sends httpx requests straight to its transport -- aiohttp's connection pool
    (see ``_transport``), or httpx's own when a proxy is configured -- because the
    API needs none of ``httpx.AsyncClient``'s per-request work (redirects, cookies,
    auth negotiation), and a triggerer polling thousands of jobs pays for it on every poll.

    :param http_client: an ``httpx.AsyncClient`` to send through instead, so that many
        waits can share one connection pool; it must not follow redirects. Its owner closes it.
    :param max_in_flight: at most this many requests of this client on the wire at once;
        the others wait their turn, so a burst of thousands of polls cannot swamp the pool.
    """

    def __init__(
        self,
        token: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        **kwargs: Any,
    ) -> None:
        super().__init__(token, **kwargs)
        options = self.settings.httpx_options()
        self._owns_http = http_client is None
        self._transport: httpx.AsyncBaseTransport | None = None
        if http_client is None:
            # Imported here: aiohttp is not needed (nor paid for) by a DAG file that only parses.
            from airflow_provider_runcomfy.client._transport import async_http_client

            http_client, self._transport = async_http_client(options, max_connections=max_in_flight)
        self._http = http_client
        self._auth: httpx.Auth = options["auth"]
        # The Authorization header is set here, not by ``auth``, on the direct path: every URL
        # this client builds is ``base_url`` + an API path, the one origin the token belongs to.
        self._headers = httpx.Headers(
            {**options["headers"], "Authorization": f"Bearer {self.settings.token}"}
        )
        self._timeout: httpx.Timeout = options["timeout"]
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._in_flight_limit = max_in_flight

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool, if this client created it."""
        if self._owns_http:
            await self._http.aclose()

    async def submit(self, model_id: str, payload: Mapping[str, Any]) -> SubmitResponse:
        """Start a job (paid). Never retried once the request may have reached RunComfy."""
        return await self._send(self._prepare(_base.submit_call(model_id, payload)))

    async def get_status(self, request_id: str) -> RequestStatus:
        """Read a job's current state."""
        return await self._send(self._prepare(_base.status_call(request_id)))

    async def get_result(self, request_id: str, *, include_cost: bool = True) -> RequestResult:
        """Read a job's outcome and outputs (or its state while unfinished), with its cost."""
        return await self._send(self._prepare(_base.result_call(request_id, include_cost)))

    async def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a job that is still queued; a running job finishes and is billed."""
        return await self._send(self._prepare(_base.cancel_call(request_id)))

    async def get_model(self, model_id: str) -> ModelInfo:
        """Read a model's description and price."""
        return await self._send(self._prepare(_base.model_call(model_id)))

    async def wait_for_result(
        self,
        request_id: str,
        *,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        on_status: StatusCallback | None = None,
        max_consecutive_errors: int = MAX_CONSECUTIVE_POLL_ERRORS,
    ) -> RequestResult:
        """Poll until the job is finished and return its result; see ``RunComfyClient.wait_for_result``."""
        watch = Watch(request_id, poll_interval, deadline, max_consecutive_errors, on_status)
        # Described once per wait, not per poll: a poll is one GET and one small parse.
        status_call = self._prepare(_base.status_call(request_id))
        result_call: _PreparedCall | None = None
        while True:
            try:
                if watch.observe(await self._send(status_call)):
                    result_call = result_call or self._prepare(_base.result_call(request_id))
                    result = await self._send(result_call)
                    if watch.is_final(result):
                        return result
            except RunComfyError as error:
                watch.failed(error)
            await asyncio.sleep(watch.next_sleep())

    def _prepare(self, call: Call) -> _PreparedCall:
        url = httpx.URL(f"{self.base_url}{call.path}", params=call.params or None)
        # On the direct path the request is built once and sent as often as the call is
        # (every poll of a wait): the transport only reads it.
        request = None
        if self._transport is not None:
            # The transport reads no more than the cap (and a little slack): ``BodyReader`` then
            # sees the answer is too large without the rest ever being read.
            extensions = {**self._extensions, "runcomfy_max_body": call.max_body + RAW_SLACK}
            request = httpx.Request(
                call.method, url, json=call.json, headers=self._headers, extensions=extensions
            )
        return _PreparedCall(call, url, request)

    async def _send(self, prepared: _PreparedCall) -> Any:
        # Most calls succeed at once, so the first attempt is made before the retry machinery
        # is set up (its per-call bookkeeping, a dozen objects, is a sizeable share of a poll's
        # CPU); after a failure, tenacity takes over with that attempt counted and the time it
        # took deducted, so the retry policy applies exactly as if it had run from the start.
        started = time.monotonic()
        try:
            return await self._send_once(prepared)
        except RunComfyError as error:
            first_error = error
        policy = self.settings.retry
        policy = replace(policy, max_total=max(policy.max_total - (time.monotonic() - started), 0.0))
        call = prepared.call
        first_attempt = True
        async for attempt in AsyncRetrying(
            **policy.tenacity_kwargs(idempotent=call.idempotent, what=call.what)
        ):
            with attempt:
                if first_attempt:
                    first_attempt = False
                    raise first_error
                return await self._send_once(prepared)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _send_once(self, prepared: _PreparedCall) -> Any:
        call = prepared.call
        sent_at = None if call.idempotent else datetime.now(UTC)
        try:
            await self._take_place()
            try:
                answer = await self._transmit(prepared)
            finally:
                self._in_flight.release()
        except httpx.TransportError as error:
            raise transport_error(call, error, self.settings, sent_at) from None
        return parse_response(call, answer, self.settings, sent_at)

    async def _take_place(self) -> None:
        """Wait for a place among the requests in flight, for at most httpx's pool timeout."""
        if not self._in_flight.locked():
            await self._in_flight.acquire()  # at once
            return
        try:
            async with asyncio.timeout(self._timeout.pool):
                await self._in_flight.acquire()
        except TimeoutError:
            # What httpx's own pool raises: the request never left, so even a submit may be retried.
            raise httpx.PoolTimeout(
                f"{self._in_flight_limit} requests were in flight for longer than the pool timeout"
            ) from None

    async def _transmit(self, prepared: _PreparedCall) -> Answer:
        """Send one request and read its answer, within the call's cap."""
        call = prepared.call
        if self._transport is None or prepared.request is None:
            # A caller's (or a proxied) ``httpx.AsyncClient``: its headers, mounts and proxies
            # apply, and ``auth`` sends the token to the API's origin only, as it always did.
            request = self._http.build_request(
                call.method, prepared.url, json=call.json, headers=self._headers, timeout=self._timeout
            )
            response = await self._http.send(request, auth=self._auth, follow_redirects=False, stream=True)
        else:
            response = await self._transport.handle_async_request(prepared.request)
        try:
            reader = BodyReader(call, response)
            async for chunk in response.aiter_raw():
                if not reader.feed(chunk):
                    break
        finally:
            await response.aclose()
        return reader.answer()


@dataclass(frozen=True, slots=True)
class _PreparedCall:
    """A ``Call`` with what sending it needs, computed once: its URL and (direct path) its request."""

    call: Call
    url: httpx.URL
    request: httpx.Request | None
