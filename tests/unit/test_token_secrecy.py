"""The token lives only in the connection: no log line, exception text or repr ever shows it.

Every error path the client and hook have is driven with one distinctive
token, with every logger at DEBUG, and everything a user could see is searched.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable

import pytest

from airflow_provider_runcomfy.client import RetryPolicy, RunComfyClient, RunComfyError
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT

TOKEN = "rc-SECRET-7f3a9c1e5b"
FAST = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def emulator_with_token() -> RunComfyEmulator:
    with RunComfyEmulator(token=TOKEN, queue_seconds=0.1, run_seconds=0.2) as emulator:
        yield emulator  # type: ignore[misc]


def test_the_token_appears_in_no_log_exception_or_repr(
    emulator_with_token: RunComfyEmulator,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator_with_token
    caplog.set_level(logging.DEBUG)  # httpx, httpcore, tenacity, the client: everything
    seen: list[str] = []

    def expect_error(call: Callable[[], object]) -> None:
        with pytest.raises(RunComfyError) as caught:
            call()
        seen.extend([str(caught.value), repr(caught.value), caught.value.message])
        if caught.value.__cause__ is not None:
            seen.append(repr(caught.value.__cause__))

    client = RunComfyClient(TOKEN, base_url=emu.base_url, retry=FAST, read_timeout=0.3)
    wrong = RunComfyClient(TOKEN + "-revoked", base_url=emu.base_url, retry=FAST)
    seen += [repr(client), repr(client.settings), repr(client._http), repr(client._http.auth)]

    good = {"prompt": "p", "image_url": emu.sample_url()}
    expect_error(lambda: wrong.get_status("abc"))  # 400004
    expect_error(lambda: client.get_status("missing"))  # 404001
    expect_error(lambda: client.submit("example/unknown-model", {}))  # 400001
    expect_error(lambda: client.submit(NANO_BANANA_EDIT, {"prompt": "p", "image_urls": []}))  # 422001
    emu.add_fault("status", "http", times=5, status=429, retry_after=0)
    expect_error(lambda: client.get_status("abc"))  # rate limited, after a logged retry
    emu.add_fault("result", "http", times=5, status=503)
    expect_error(lambda: client.get_result("abc"))  # server error, after a logged retry
    emu.add_fault("status", "error_200", times=5, error_code=500001)
    expect_error(lambda: client.get_status("abc"))
    emu.add_fault("submit", "delay", times=1, seconds=1.0)
    expect_error(lambda: client.submit(FLUX_KONTEXT_PRO_EDIT, good))  # outcome unknown
    emu.add_fault("submit", "drop", times=1)
    expect_error(lambda: client.submit(FLUX_KONTEXT_PRO_EDIT, good))
    expect_error(lambda: client.get_status("../x"))  # invalid id, no request
    emu.set_config(balance_usd=0.0)
    expect_error(lambda: client.submit(FLUX_KONTEXT_PRO_EDIT, good))  # 400002
    emu.set_config(balance_usd=None, queue_seconds=30)
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, good).request_id
    expect_error(lambda: client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 0.3))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = RunComfyClient(TOKEN, base_url=f"http://127.0.0.1:{port}", retry=FAST)
    expect_error(lambda: closed.get_status("abc"))  # transport error

    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps({"conn_type": "runcomfy", "host": emu.base_url, "password": TOKEN + "-revoked"}),
    )
    hook = RunComfyHook()
    ok, message = hook.test_connection()
    assert not ok
    seen += [message, repr(hook), repr(hook.client)]

    out, err = capsys.readouterr()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "the retries above should have been logged"
    assert "retry" in logged
    everything = "\n".join([*seen, logged, out, err])
    assert "rc-SECRET" not in everything
    # ... while the token was really sent, to the API only:
    assert emu.journal.of("status")[0].headers["authorization"].endswith("-revoked")
