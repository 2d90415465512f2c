"""The asyncio client behaves the same over aiohttp's transport as over httpx's own.

Each misbehaviour the emulator can stage is played against both transports
(httpx's own is what the client keeps behind a proxy); what a user sees --
the outcome, the error, how many requests reached RunComfy, what the retry
log names -- must be identical. A submit may be repeated only when its request
provably never left, so the transport errors must keep their meaning.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
from aiohttp.client_reqrep import ConnectionKey

from airflow_provider_runcomfy.client import (
    AsyncRunComfyClient,
    RetryPolicy,
    RunComfyClient,
    RunComfyError,
    TransportError,
    _transport,
)
from airflow_provider_runcomfy.client._answers import transport_error
from airflow_provider_runcomfy.client._base import submit_call
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT

CONNECTION_KEY = ConnectionKey("127.0.0.1", 443, True, True, None, None, None, None)
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_total=20)
TRANSPORTS = ["aiohttp", "httpx"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which transport the async client gets: its default, or httpx's own (as behind a proxy)."""
    if request.param == "httpx":
        monkeypatch.setattr(_transport, "uses_env_proxy", lambda: True)
    return str(request.param)


def new_client(base_url: str, token: str, **kwargs: Any) -> AsyncRunComfyClient:
    return AsyncRunComfyClient(token, base_url=base_url, **{"retry": FAST_RETRY, **kwargs})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Scenario = Callable[[RunComfyEmulator, AsyncRunComfyClient, str], Awaitable[object]]


async def status_after_429(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("status", "http", status=429, retry_after=0.3)
    started = time.monotonic()
    await client.get_status(request_id)
    return time.monotonic() - started >= 0.3  # Retry-After honoured, not FAST_RETRY's 0.01 s


async def result_after_5xx_burst(
    emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str
) -> object:
    emu.add_fault("result", "http", times=3, status=503)
    return (await client.get_result(request_id)).request_id == request_id


async def status_after_a_drop(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("status", "drop")
    return (await client.get_status(request_id)).request_id == request_id


async def result_cut_short(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("result", "truncate", after_bytes=5)
    return (await client.get_result(request_id)).request_id == request_id


async def status_too_slow(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("status", "delay", seconds=0.8)
    return (await client.get_status(request_id)).request_id == request_id


async def status_200_with_500001(
    emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str
) -> object:
    emu.add_fault("status", "error_200", error_code=500001)
    return (await client.get_status(request_id)).request_id == request_id


async def status_200_with_404001(
    emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str
) -> object:
    emu.add_fault("status", "error_200", error_code=404001)
    return await client.get_status(request_id)


async def status_5xx_persisting(
    emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str
) -> object:
    emu.add_fault("status", "http", times=None, status=500, error_code=500001)
    return await client.get_status(request_id)


async def submit_dropped(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("submit", "drop")
    return await client.submit(FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": emu.sample_url()})


async def submit_too_slow(emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str) -> object:
    emu.add_fault("submit", "delay", seconds=0.8)
    return await client.submit(FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": emu.sample_url()})


async def submit_refused_with_429(
    emu: RunComfyEmulator, client: AsyncRunComfyClient, request_id: str
) -> object:
    emu.add_fault("submit", "http", times=2, status=429, retry_after=0)
    return bool(await client.submit(FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": emu.sample_url()}))


SCENARIOS: dict[str, tuple[Scenario, tuple[str, str, int, tuple[str, ...]]]] = {
    # name: (scenario, (outcome, endpoint counted, requests received, transport errors in the retry log))
    "429 with Retry-After": (status_after_429, ("True", "status", 2, ())),
    "5xx burst": (result_after_5xx_burst, ("True", "result", 4, ())),
    "dropped connection on a read": (status_after_a_drop, ("True", "status", 2, ("RemoteProtocolError",))),
    "answer cut short": (result_cut_short, ("True", "result", 2, ("RemoteProtocolError",))),
    "read timeout on a read": (status_too_slow, ("True", "status", 2, ("ReadTimeout",))),
    "200 carrying 500001": (status_200_with_500001, ("True", "status", 2, ())),
    "200 carrying 404001": (status_200_with_404001, ("RequestNotFoundError", "status", 1, ())),
    "5xx persisting": (status_5xx_persisting, ("ServerError", "status", FAST_RETRY.max_attempts, ())),
    "dropped submit": (submit_dropped, ("SubmitOutcomeUnknownError", "submit", 1, ())),
    "read timeout on a submit": (submit_too_slow, ("SubmitOutcomeUnknownError", "submit", 1, ())),
    "submit refused with 429": (submit_refused_with_429, ("True", "submit", 3, ())),
}


@pytest.fixture
def sync_client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        yield client


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_retries_timeouts_and_errors_are_the_same_over_both_transports(
    name: str,
    runcomfy_emulator: RunComfyEmulator,
    sync_client: RunComfyClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scenario, expected = SCENARIOS[name]
    request_id = sync_client.submit(
        FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
    ).request_id
    outcomes = {}
    for transport in TRANSPORTS:
        runcomfy_emulator.journal.clear()
        runcomfy_emulator.clear_faults()
        caplog.clear()
        monkeypatch.setattr(_transport, "uses_env_proxy", lambda transport=transport: transport == "httpx")
        async with new_client(
            runcomfy_emulator.base_url, runcomfy_emulator.token, read_timeout=0.4
        ) as client:
            assert (client._transport is None) == (transport == "httpx")
            try:
                outcome = str(await scenario(runcomfy_emulator, client, request_id))
            except RunComfyError as error:
                outcome = type(error).__name__
        endpoint = expected[1]
        logged = tuple(re.findall(r"\((\w+): ", " ".join(r.getMessage() for r in caplog.records)))
        outcomes[transport] = (outcome, endpoint, runcomfy_emulator.journal.count(endpoint), logged)
    assert outcomes["aiohttp"] == outcomes["httpx"] == expected


async def test_a_refused_connection_never_sent_the_request_so_a_submit_is_retried(transport: str) -> None:
    client = new_client(f"http://127.0.0.1:{free_port()}", "tok")
    async with client:
        with pytest.raises(TransportError, match=r"\(ConnectError: ") as caught:
            await client.submit(FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": "https://x/y.png"})
    assert not caught.value.request_sent


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ClientConnectorError(CONNECTION_KEY, OSError(111, "refused")), httpx.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientConnectionResetError("reset"), httpx.WriteError),
        (aiohttp.ClientOSError(104, "reset by peer"), httpx.ReadError),
    ],
)
def test_aiohttp_errors_become_httpx_errors_of_the_same_meaning(
    raised: Exception, expected: type[httpx.TransportError]
) -> None:
    request = httpx.Request("POST", "https://model-api.runcomfy.net/v1/models/a/b")
    translated = _transport.translate_error(raised, request)
    assert type(translated) is expected
    assert translated.request is request
    # What the client concludes: only a connection never made means a submit never left.
    never_sent = expected in (httpx.ConnectError, httpx.ConnectTimeout)
    assert transport_error(submit_call("a/b", {}), translated).__class__.__name__ == (
        "TransportError" if never_sent else "SubmitOutcomeUnknownError"
    )


# -- TLS: verified by default, trusting what SSL_CERT_FILE names -------------------------------------


@pytest.fixture
async def tls_server(tmp_path: Path) -> Any:
    """A tiny HTTPS status endpoint on 127.0.0.1 with a certificate from a throwaway CA."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                body = b'{"request_id": "abc", "status": "in_progress"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield f"https://127.0.0.1:{port}", ca_file
    server.close()


async def test_tls_is_verified_and_trusts_the_ca_in_ssl_cert_file(
    transport: str, tls_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, ca_file = tls_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with new_client(base_url, "tok") as untrusting:
        with pytest.raises(TransportError, match="ConnectError") as caught:
            await untrusting.get_status("abc")
    assert not caught.value.request_sent

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with new_client(base_url, "tok") as trusting:
        assert (await trusting.get_status("abc")).status.value == "in_progress"


def test_clients_share_one_ssl_context_per_trust_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch's worker part makes a client per refill and per wait; building an SSL context
    # loads the CA bundle each time (~30 ms of CPU), so the transports of a process share one --
    # but never across different trust settings (the test above switches SSL_CERT_FILE).
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    first, second = _transport.AiohttpTransport(), _transport.AiohttpTransport()
    assert first._ssl is second._ssl
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    trusting = _transport.AiohttpTransport()
    assert trusting._ssl is not first._ssl
    assert _transport.AiohttpTransport()._ssl is trusting._ssl
    unverified = _transport.AiohttpTransport(verify=False)
    assert unverified._ssl is not trusting._ssl
    assert unverified._ssl.verify_mode is ssl.CERT_NONE


async def test_the_token_shows_in_no_error_or_log_over_the_fast_transport(
    runcomfy_emulator: RunComfyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runcomfy_emulator.add_fault("status", "drop", times=10)
    async with new_client(runcomfy_emulator.base_url, runcomfy_emulator.token) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_status("abc")
        seen = [
            str(caught.value),
            repr(caught.value),
            repr(client),
            repr(client._http),
            repr(client._transport),
        ]
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "retry" in logged
    assert runcomfy_emulator.token not in " ".join([*seen, logged])
