"""``RunComfyHook``: an Airflow connection turned into a RunComfy client.

The hook only reads the connection and builds clients; every request,
retry and error message lives in ``airflow_provider_runcomfy.client``.
The clients are imported when first built, not when a DAG file imports an operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client import RunComfyError
from airflow_provider_runcomfy.compat import BaseHook, aget_connection

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from airflow_provider_runcomfy.client import (
        AsyncRunComfyClient,
        CancelResponse,
        ModelInfo,
        RequestResult,
        RequestStatus,
        RunComfyClient,
        SubmitResponse,
    )

#: The model whose info page ``test_connection`` reads: a cheap, authenticated, unbilled call.
_PROBE_MODEL = "blackforestlabs/flux-1-kontext/pro/edit"


class RunComfyHook(BaseHook):
    """Speaks the RunComfy Model API with the token of an Airflow connection.

    The connection (type ``runcomfy``) keeps the API token as its **password**;
    its **host** may override the base URL (``https://model-api.runcomfy.net``;
    ``http://`` only for a loopback host such as the emulator); its extras may set
    ``connect_timeout``, ``read_timeout`` (seconds), ``max_retries`` and, for triggers,
    ``max_in_flight`` (requests on the wire at once through the triggerer's shared pool).

    :param runcomfy_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "runcomfy_conn_id"
    default_conn_name = "runcomfy_default"
    conn_type = "runcomfy"
    hook_name = "RunComfy"

    def __init__(self, runcomfy_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runcomfy_conn_id = runcomfy_conn_id

    # -- clients --------------------------------------------------------------------------------

    def client_kwargs(self, conn: Connection, *, named: str | None = None) -> dict[str, Any]:
        """Client settings from a connection; the token goes in as ``token``, never logged.

        :param named: how error messages name the connection (``Airflow connection '<id>'``).
        """
        from airflow_provider_runcomfy.client import RetryPolicy

        extra = _extras(conn)
        max_retries = _number(extra, "max_retries")
        return {
            "token": conn.password or "",
            "base_url": _base_url(conn),
            "connect_timeout": _number(extra, "connect_timeout"),
            "read_timeout": _number(extra, "read_timeout"),
            "retry": RetryPolicy(max_attempts=int(max_retries) + 1) if max_retries is not None else None,
            "credential_hint": f"the password (API token) of {named or self._named}",
        }

    @cached_property
    def settings(self) -> dict[str, Any]:
        """``client_kwargs`` of this hook's connection, read once per hook (copy before changing)."""
        return self.client_kwargs(self.get_connection(self.runcomfy_conn_id))

    @cached_property
    def client(self) -> RunComfyClient:
        """The blocking client, built once per hook."""
        from airflow_provider_runcomfy.client import RunComfyClient

        return RunComfyClient(**self.settings)

    def get_conn(self) -> RunComfyClient:
        """The blocking client (Airflow's usual hook entry point)."""
        return self.client

    async def aget_client(self, **kwargs: Any) -> AsyncRunComfyClient:
        """An asyncio client; reads the connection with the async API (triggers must not block)."""
        from airflow_provider_runcomfy.client import AsyncRunComfyClient

        conn = await aget_connection(self, self.runcomfy_conn_id)
        return AsyncRunComfyClient(**self.client_kwargs(conn), **kwargs)

    @asynccontextmanager
    async def ashared_client(self) -> AsyncIterator[AsyncRunComfyClient]:
        """Borrow this event loop's shared asyncio client for the connection (what triggers use).

        The connection is read once, here; every trigger of the same connection (and the same
        token and host) in the loop then polls through one connection pool, closed when the
        last of them is done. See ``airflow_provider_runcomfy.client._pool``.
        """
        from airflow_provider_runcomfy.client._pool import shared_client

        conn = await aget_connection(self, self.runcomfy_conn_id)
        kwargs = self.client_kwargs(conn)
        max_in_flight = _number(_extras(conn), "max_in_flight")
        if max_in_flight:
            kwargs["max_in_flight"] = int(max_in_flight)
        async with shared_client(self.runcomfy_conn_id, **kwargs) as client:
            yield client

    # -- blocking calls -------------------------------------------------------------------------

    def submit(self, model_id: str, payload: Mapping[str, Any]) -> SubmitResponse:
        """Start a job (paid); see ``RunComfyClient.submit``."""
        return self.client.submit(model_id, payload)

    def get_status(self, request_id: str) -> RequestStatus:
        """Read a job's state."""
        return self.client.get_status(request_id)

    def get_result(self, request_id: str) -> RequestResult:
        """Read a job's outcome and outputs."""
        return self.client.get_result(request_id)

    def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a queued job."""
        return self.client.cancel(request_id)

    def get_model(self, model_id: str) -> ModelInfo:
        """Read a model's info and price."""
        return self.client.get_model(model_id)

    # -- async twins (through this event loop's shared pool, like the trigger) --------------------

    async def asubmit(self, model_id: str, payload: Mapping[str, Any]) -> SubmitResponse:
        """Async ``submit`` (paid; never retried once it may have reached RunComfy)."""
        async with self.ashared_client() as client:
            return await client.submit(model_id, payload)

    async def aget_status(self, request_id: str) -> RequestStatus:
        """Async ``get_status``."""
        async with self.ashared_client() as client:
            return await client.get_status(request_id)

    async def aget_result(self, request_id: str) -> RequestResult:
        """Async ``get_result``."""
        async with self.ashared_client() as client:
            return await client.get_result(request_id)

    async def acancel(self, request_id: str) -> CancelResponse:
        """Async ``cancel``."""
        async with self.ashared_client() as client:
            return await client.cancel(request_id)

    # -- connection form ------------------------------------------------------------------------

    @property
    def _named(self) -> str:
        return f"Airflow connection {self.runcomfy_conn_id!r}"

    def test_connection(self) -> tuple[bool, str]:
        """Read one model's info with the token: proves the base URL and the token, costs nothing.

        The messages name the connection being tested, also when the UI's *Test* button runs
        it under the API's random stand-in id (``hooks.tested_connection``).
        """
        from airflow_provider_runcomfy.client import RunComfyClient
        from airflow_provider_runcomfy.hooks.tested_connection import connection_named

        named = connection_named(self.runcomfy_conn_id)
        try:
            conn = self.get_connection(self.runcomfy_conn_id)
            with RunComfyClient(**self.client_kwargs(conn, named=named)) as client:
                client.get_model(_PROBE_MODEL)
                base_url = client.base_url
        except (RunComfyError, ValueError) as error:
            return False, error.message if isinstance(error, RunComfyError) else str(error)
        return True, f"Connected to RunComfy at {base_url}: the API token of {named} was accepted."


def _extras(conn: Connection) -> dict[str, Any]:
    extra = conn.extra_dejson or {}
    # Connection forms may store extras with the legacy ``extra__runcomfy__`` prefix.
    return {key.removeprefix("extra__runcomfy__"): value for key, value in extra.items()}


def _number(extra: Mapping[str, Any], key: str) -> float | None:
    value = extra.get(key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Connection extra {key!r} must be a number, not {value!r}.") from None


def _base_url(conn: Connection) -> str | None:
    """The base URL from the connection's host (with its port when given separately)."""
    host = (conn.host or "").strip()
    if not host:
        return None
    if (conn.port and "://" in host and host.count(":") < 2) or (conn.port and "://" not in host):
        host = f"{host}:{conn.port}"
    if conn.schema and "://" not in host:
        host = f"{conn.schema}://{host}"
    return host
