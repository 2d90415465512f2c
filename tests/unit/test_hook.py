"""RunComfyHook: an Airflow connection (from the environment, as users set it) turned into a client."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pytest_mock import MockerFixture

from airflow_provider_runcomfy.client import AsyncRunComfyClient, InvalidInputError, RequestState
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT


def set_connection(
    monkeypatch: pytest.MonkeyPatch, conn_id: str = "runcomfy_default", **fields: object
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "runcomfy", **fields}))


def test_test_connection_accepts_a_good_token(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, host=runcomfy_emulator.base_url, password=runcomfy_emulator.token)
    ok, message = RunComfyHook().test_connection()
    assert ok, message
    assert runcomfy_emulator.base_url in message
    assert runcomfy_emulator.journal.count("model") == 1  # one cheap, unbilled call
    assert runcomfy_emulator.journal.count("submit") == 0


def test_test_connection_names_the_connection_to_fix_for_a_bad_token(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, "rc_prod", host=runcomfy_emulator.base_url, password="revoked")
    ok, message = RunComfyHook("rc_prod").test_connection()
    assert not ok
    assert "400004" in message
    assert "Airflow connection 'rc_prod'" in message


def test_test_connection_without_a_token_says_where_to_put_it(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, host="http://127.0.0.1:9")
    ok, message = RunComfyHook().test_connection()
    assert not ok
    assert "No RunComfy API token" in message


def test_plain_http_is_refused_for_a_non_loopback_host(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, host="http://model-api.runcomfy.net", password="t")
    with pytest.raises(InvalidInputError, match="plain http:// is allowed only for a loopback host"):
        RunComfyHook().get_conn()


def test_the_default_base_url_and_connection_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(
        monkeypatch, password="t", extra={"read_timeout": 12, "connect_timeout": "3", "max_retries": 1}
    )
    client = RunComfyHook().get_conn()
    assert client.base_url == "https://model-api.runcomfy.net"
    assert client.settings.read_timeout == 12.0
    assert client.settings.connect_timeout == 3.0
    assert client.settings.retry.max_attempts == 2


def test_sync_calls_through_the_hook(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, host=runcomfy_emulator.base_url, password=runcomfy_emulator.token)
    runcomfy_emulator.add_rule(hold=True)  # queued until released: no bet on the emulator's clock
    hook = RunComfyHook()
    payload = {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
    request_id = hook.submit(FLUX_KONTEXT_PRO_EDIT, payload).request_id
    assert hook.get_status(request_id).status is RequestState.IN_QUEUE
    assert hook.cancel(request_id).cancelled
    assert hook.get_result(request_id).status is RequestState.CANCELLED
    assert hook.get_model(FLUX_KONTEXT_PRO_EDIT).base_price_usd is not None


async def test_async_twins_read_the_connection_with_the_async_api(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, host=runcomfy_emulator.base_url, password=runcomfy_emulator.token)
    runcomfy_emulator.add_rule(hold=True)  # queued until released: no bet on the emulator's clock
    hook = RunComfyHook()
    payload = {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
    request_id = (await hook.asubmit(FLUX_KONTEXT_PRO_EDIT, payload)).request_id
    assert (await hook.aget_status(request_id)).status is RequestState.IN_QUEUE
    assert runcomfy_emulator.release(request_id) == [request_id]
    deadline = time.monotonic() + 30  # generous: the job runs 0.5 s once released
    while (state := (await hook.aget_result(request_id)).status) is not RequestState.SUCCEEDED:
        assert time.monotonic() < deadline, f"the released job is still {state.value} after 30 s"
        await asyncio.sleep(0.1)  # poll interval of a condition wait, not a synchronisation
    assert (await hook.acancel(request_id)).outcome == "not_cancellable"


async def test_async_twins_share_the_loops_pool_instead_of_building_one_per_call(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> None:
    set_connection(monkeypatch, host=runcomfy_emulator.base_url, password=runcomfy_emulator.token)
    hook = RunComfyHook()
    payload = {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
    request_id = (await hook.asubmit(FLUX_KONTEXT_PRO_EDIT, payload)).request_id
    built = mocker.spy(AsyncRunComfyClient, "__init__")
    statuses = await asyncio.gather(*(hook.aget_status(request_id) for _ in range(5)))
    assert {status.request_id for status in statuses} == {request_id}
    assert built.call_count == 1  # five concurrent reads, one client and one connection pool
