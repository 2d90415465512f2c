"""The token on the triggerer's path: no exception, log line, event or trigger argument ever shows it.

``test_token_secrecy.py`` drives the sync client and the hook. Every deferred wait goes
through another path: the async client, whose bytes move through aiohttp
(``client/_transport.py``, which rewrites every aiohttp error as an httpx one), shared per
connection (``client/_pool.py``), inside ``RunComfyRequestTrigger`` and
``RunComfyBatchTrigger``, whose events are stored in the metadata database. The outputs
view asks RunComfy through the hook and fetches pictures from other hosts. Each is driven
here into every error it has, with one distinctive token and every logger at DEBUG, and
everything a user or the database could see is searched.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy, RunComfyClient, RunComfyError
from airflow_provider_runcomfy.client._transport import AiohttpTransport
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT
from airflow_provider_runcomfy.plugins import status as view_status
from airflow_provider_runcomfy.plugins.media import Fetcher, PictureUnavailable
from airflow_provider_runcomfy.triggers.batch import RunComfyBatchTrigger
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

TOKEN = "rc-SECRET-async-4d2b8e"
SECRET = "rc-SECRET"
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def emu() -> Iterator[RunComfyEmulator]:
    with RunComfyEmulator(token=TOKEN, queue_seconds=0, run_seconds=0.2) as emulator:
        yield emulator


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """What the test collects; at the end it, every log record and all output must lack the token."""
    caplog.set_level(logging.DEBUG)  # aiohttp, httpx, the client, the triggers: everything
    texts: list[str] = []
    yield texts
    out, err = capsys.readouterr()  # Airflow's trigger loggers write through structlog, to stdout
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert texts, "the test should have collected what a user sees"
    leaked = [text for text in [*texts, logged, out, err] if SECRET in text]
    assert not leaked, leaked[0][:2000]


def set_connection(monkeypatch: pytest.MonkeyPatch, emu: RunComfyEmulator, token: str = TOKEN) -> None:
    conn = {"conn_type": "runcomfy", "host": emu.base_url, "password": token, "extra": {"max_retries": 0}}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))


def error_texts(error: BaseException) -> tuple[list[str], list[type[BaseException]]]:
    """str and repr of the error and of every error it was raised from, and their types."""
    texts: list[str] = []
    kinds: list[type[BaseException]] = []
    current: BaseException | None = error
    while current is not None and len(kinds) < 20:
        kinds.append(type(current))
        texts += [str(current), repr(current), str(getattr(current, "message", ""))]
        current = current.__cause__ or current.__context__
    return texts, kinds


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def submit(emu: RunComfyEmulator, prompt: str = "p") -> str:
    with RunComfyClient(TOKEN, base_url=emu.base_url) as client:
        return client.submit(
            FLUX_KONTEXT_PRO_EDIT, {"prompt": prompt, "image_url": emu.sample_url()}
        ).request_id


async def test_the_async_client_and_its_aiohttp_transport_never_show_the_token(
    emu: RunComfyEmulator, seen: list[str]
) -> None:
    causes: set[type[BaseException]] = set()

    async def expect_error(call: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(RunComfyError) as caught:
            await call()
        emu.clear_faults()  # what is left of this fault must not hit the next call
        texts, kinds = error_texts(caught.value)
        seen.extend(texts)
        causes.update(kinds)

    good = {"prompt": "p", "image_url": emu.sample_url()}
    async with (
        AsyncRunComfyClient(TOKEN, base_url=emu.base_url, retry=FAST, read_timeout=0.3) as client,
        AsyncRunComfyClient(TOKEN + "-revoked", base_url=emu.base_url, retry=FAST) as wrong,
        AsyncRunComfyClient(TOKEN, base_url=f"http://127.0.0.1:{closed_port()}", retry=FAST) as closed,
    ):
        # The triggerer's path: bytes through aiohttp, not httpx's own transport.
        assert isinstance(client._transport, AiohttpTransport)
        seen += [repr(client), repr(client.settings), repr(client._http), repr(client._transport)]

        await expect_error(lambda: wrong.get_status("abc"))  # 400004
        await expect_error(lambda: client.get_status("missing"))  # 404001
        await expect_error(lambda: client.submit("example/unknown-model", {}))  # 400001
        emu.add_fault("status", "http", times=5, status=429, retry_after=0)
        await expect_error(lambda: client.get_status("abc"))  # rate limited, after a logged retry
        emu.add_fault("result", "http", times=5, status=503)
        await expect_error(lambda: client.get_result("abc"))
        emu.add_fault("status", "error_200", times=5, error_code=500001)
        await expect_error(lambda: client.get_status("abc"))
        request_id = (await client.submit(FLUX_KONTEXT_PRO_EDIT, good)).request_id
        # Errors aiohttp raises, each rewritten by the transport as an httpx error:
        emu.add_fault("status", "delay", times=5, seconds=1.0)
        await expect_error(lambda: client.get_status(request_id))  # no answer within read_timeout
        emu.add_fault("status", "drop", times=5)
        await expect_error(lambda: client.get_status(request_id))  # connection closed, no answer
        emu.add_fault("result", "truncate", times=5, after_bytes=5)
        await expect_error(lambda: client.get_result(request_id))  # an answer cut short
        emu.add_fault("submit", "drop", times=1)
        await expect_error(lambda: client.submit(FLUX_KONTEXT_PRO_EDIT, good))  # outcome unknown
        await expect_error(lambda: closed.get_status("abc"))  # connection refused
        await expect_error(lambda: client.get_status("../x"))  # invalid id, no request

    # Each aiohttp failure really went through the transport's translation:
    assert {httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ConnectError} <= causes
    # ... while the token was really sent, to the API only:
    assert emu.journal.of("status")[0].headers["authorization"].endswith("-revoked")


async def test_the_request_trigger_keeps_the_token_out_of_its_events_arguments_and_logs(
    emu: RunComfyEmulator, seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, emu)
    emu.add_rule(prompt_contains="held", hold=True)

    async def event_of(trigger: RunComfyRequestTrigger) -> dict[str, Any]:
        seen.append(json.dumps(trigger.serialize(), default=str))  # stored in the metadata database
        [event] = [event.payload async for event in trigger.run()]
        seen.append(json.dumps(event, default=str))
        return event

    request_id = submit(emu)
    emu.add_fault("status", "drop", times=None, request_id=request_id)
    event = await event_of(RunComfyRequestTrigger(request_id, poll_interval=0.05, max_consecutive_errors=1))
    assert event["status"] == "error"
    emu.clear_faults()

    request_id = submit(emu)
    emu.add_fault("status", "delay", times=None, seconds=2.0, request_id=request_id)
    set_connection(monkeypatch, emu)
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_SLOW",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "host": emu.base_url,
                "password": TOKEN,
                "extra": {"max_retries": 0, "read_timeout": 0.3},
            }
        ),
    )
    trigger = RunComfyRequestTrigger(
        request_id, runcomfy_conn_id="runcomfy_slow", poll_interval=0.05, max_consecutive_errors=1
    )
    assert (await event_of(trigger))["status"] == "error"
    emu.clear_faults()

    assert (await event_of(RunComfyRequestTrigger(submit(emu), poll_interval=0.05)))["status"] == "succeeded"

    set_connection(monkeypatch, emu, TOKEN + "-revoked")
    event = await event_of(RunComfyRequestTrigger(request_id, poll_interval=0.05))
    assert event["status"] == "error" and "400004" in event["message"]

    set_connection(monkeypatch, emu)
    held = submit(emu, "held")
    await RunComfyRequestTrigger(held, poll_interval=0.05).on_kill()  # no task instance: cancels
    assert emu.job(held).phase == "cancelled"
    assert emu.journal.of("cancel")[-1].headers["authorization"] == f"Bearer {TOKEN}"  # the API got it


async def test_the_batch_trigger_keeps_the_token_out_of_its_events_arguments_and_logs(
    emu: RunComfyEmulator, seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, emu)
    emu.add_rule(prompt_contains="held", hold=True)

    async def event_of(trigger: RunComfyBatchTrigger) -> dict[str, Any]:
        seen.append(json.dumps(trigger.serialize(), default=str))
        [event] = [event.payload async for event in trigger.run()]
        seen.append(json.dumps(event, default=str))
        return event

    def window(*prompts: str) -> list[list[Any]]:
        return [[submit(emu, prompt), f"key.{i}", time.time()] for i, prompt in enumerate(prompts)]

    finished = window("a", "b")
    event = await event_of(
        RunComfyBatchTrigger(FLUX_KONTEXT_PRO_EDIT, finished, poll_interval=0.05, wake_count=2)
    )
    assert sorted(outcome["key"] for outcome in event["outcomes"]) == ["key.0", "key.1"]

    failing = window("c")
    emu.add_fault("status", "drop", times=None)
    emu.add_fault("result", "drop", times=None)
    event = await event_of(RunComfyBatchTrigger(FLUX_KONTEXT_PRO_EDIT, failing, poll_interval=0.05))
    assert event["status"] == "error"
    emu.clear_faults()

    set_connection(monkeypatch, emu, TOKEN + "-revoked")
    event = await event_of(RunComfyBatchTrigger(FLUX_KONTEXT_PRO_EDIT, failing, poll_interval=0.05))
    assert event["status"] == "error"

    set_connection(monkeypatch, emu)
    held = window("held 1", "held 2")
    emu.add_fault("cancel", "drop", times=1)
    await RunComfyBatchTrigger(FLUX_KONTEXT_PRO_EDIT, held, poll_interval=0.05).on_kill()
    assert {emu.job(str(entry[0])).phase for entry in held} <= {"cancelled", "in_queue"}
    assert emu.journal.count("cancel") >= 2


def test_the_outputs_view_never_shows_the_token_nor_sends_it_to_picture_hosts(
    emu: RunComfyEmulator, seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view asks RunComfy about a job through the hook, and fetches its pictures with no credentials."""
    monkeypatch.setattr(view_status, "_ANSWERS", {})
    set_connection(monkeypatch, emu, TOKEN + "-revoked")
    request_id = submit(emu)
    asked = view_status.ask_runcomfy(request_id)
    assert asked.status is None and asked.problem and "400004" in asked.problem
    seen.append(repr(asked))

    monkeypatch.setattr(view_status, "_ANSWERS", {})
    set_connection(monkeypatch, emu)
    emu.add_fault("result", "drop", times=None)
    asked = view_status.ask_runcomfy(request_id)
    assert asked.status is None and asked.problem
    seen.append(repr(asked))
    emu.clear_faults()

    with RunComfyClient(TOKEN, base_url=emu.base_url) as client:
        result = client.wait_for_result(request_id, poll_interval=0.05, deadline=time.time() + 60)
    (output,) = result.output_urls
    fetcher = Fetcher()
    try:
        content_type, body = fetcher.read(output, api_base_url=emu.base_url, max_bytes=50_000_000)
        assert content_type.startswith("image/") and body
        with pytest.raises(PictureUnavailable) as missing:
            fetcher.read(output + "-gone", api_base_url=emu.base_url, max_bytes=50_000_000)
        seen += error_texts(missing.value)[0]
    finally:
        fetcher.close()
    files = emu.journal.of("file")
    assert files and all(entry.headers.get("authorization") is None for entry in files)
