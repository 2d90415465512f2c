"""``RunComfyClient`` and ``AsyncRunComfyClient``: the RunComfy Model API in plain Python.

The twins share every decision through ``_base`` (what a call is, how its
answer reads), ``retry`` (when it is repeated) and ``_wait`` (how a job is
waited for); each only adds its own way of doing I/O and sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Self

import httpx
from tenacity import AsyncRetrying, Retrying

from airflow_provider_runcomfy.client import _base
from airflow_provider_runcomfy.client._base import Call, ClientSettings
from airflow_provider_runcomfy.client._wait import StatusCallback, Watch
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.client.models import (
    CancelResponse,
    ModelInfo,
    RequestResult,
    RequestStatus,
    SubmitResponse,
)
from airflow_provider_runcomfy.client.retry import RetryPolicy


class _ClientBase:
    settings: ClientSettings

    def __init__(
        self,
        token: str,
        *,
        base_url: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        credential_hint: str = "the RunComfy API token",
    ) -> None:
        self.settings = ClientSettings.create(
            token,
            base_url=base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retry=retry,
            credential_hint=credential_hint,
        )

    @property
    def base_url(self) -> str:
        """The API's base URL (never carries the token)."""
        return self.settings.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


class RunComfyClient(_ClientBase):
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(self, model_id: str, payload: Mapping[str, Any]) -> SubmitResponse:
        """Start a job (paid). Never retried once the request may have reached RunComfy."""
        return self._send(_base.submit_call(model_id, payload))

    def get_status(self, request_id: str) -> RequestStatus:
        """Read a job's current state."""
        return self._send(_base.status_call(request_id))

    def get_result(self, request_id: str, *, include_cost: bool = False) -> RequestResult:
        """Read a job's outcome and outputs (or its state while unfinished)."""
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
        max_consecutive_errors: int = 3,
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
        try:
            response = self._http.request(call.method, call.path, json=call.json, params=call.params)
        except httpx.TransportError as error:
            raise _base.transport_error(call, error) from None
        return _base.parse_response(call, response, self.settings)


class AsyncRunComfyClient(_ClientBase):
    """Asyncio client, for triggers: the same calls as ``RunComfyClient``, awaited.

    :param http_client: an ``httpx.AsyncClient`` to send through instead of a new one, so that
        many waits can share one connection pool; it must not follow redirects. Its owner closes it.
    """

    def __init__(self, token: str, *, http_client: httpx.AsyncClient | None = None, **kwargs: Any) -> None:
        super().__init__(token, **kwargs)
        options = self.settings.httpx_options()
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(**options)
        # Per-request options, so that a shared pool created elsewhere behaves the same.
        self._request_options = {
            key: options[key] for key in ("auth", "timeout", "follow_redirects", "headers")
        }

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
        return await self._send(_base.submit_call(model_id, payload))

    async def get_status(self, request_id: str) -> RequestStatus:
        """Read a job's current state."""
        return await self._send(_base.status_call(request_id))

    async def get_result(self, request_id: str, *, include_cost: bool = False) -> RequestResult:
        """Read a job's outcome and outputs (or its state while unfinished)."""
        return await self._send(_base.result_call(request_id, include_cost))

    async def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a job that is still queued; a running job finishes and is billed."""
        return await self._send(_base.cancel_call(request_id))

    async def get_model(self, model_id: str) -> ModelInfo:
        """Read a model's description and price."""
        return await self._send(_base.model_call(model_id))

    async def wait_for_result(
        self,
        request_id: str,
        *,
        poll_interval: float = 5.0,
        deadline: float | None = None,
        on_status: StatusCallback | None = None,
        max_consecutive_errors: int = 3,
    ) -> RequestResult:
        """Poll until the job is finished and return its result; see ``RunComfyClient.wait_for_result``."""
        watch = Watch(request_id, poll_interval, deadline, max_consecutive_errors, on_status)
        while True:
            try:
                if watch.observe(await self.get_status(request_id)):
                    result = await self.get_result(request_id)
                    if watch.is_final(result):
                        return result
            except RunComfyError as error:
                watch.failed(error)
            await asyncio.sleep(watch.next_sleep())

    async def _send(self, call: Call) -> Any:
        policy = self.settings.retry.tenacity_kwargs(idempotent=call.idempotent, what=call.what)
        async for attempt in AsyncRetrying(**policy):
            with attempt:
                return await self._send_once(call)
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _send_once(self, call: Call) -> Any:
        # Paths are joined to this client's own base URL and auth, so a shared pool
        # (one httpx.AsyncClient for many connections) still sends each token to its own host.
        url = f"{self.base_url}{call.path}"
        try:
            response = await self._http.request(
                call.method, url, json=call.json, params=call.params, **self._request_options
            )
        except httpx.TransportError as error:
            raise _base.transport_error(call, error) from None
        return _base.parse_response(call, response, self.settings)
