"""Answers that must not hurt: what the API client does when RunComfy (or whatever answers) misbehaves.

Real HTTP against the emulator, whose faults produce each answer on demand:
a 2xx submit we cannot read, huge bodies and error texts.
A compressed bomb on an API answer is served by a small loopback server of
the test's own (the emulator serves bombs as files only), and its cost is
measured in a fresh process (``rss_probe``). Values that must not hurt (Retry-After,
tokens, output lists, costs): ``test_client_hostile_values``.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from _helpers_hostile import FAST, flux_input
from rss_probe import peak_rss_growth

from airflow_provider_runcomfy.client import (
    AsyncRunComfyClient,
    InputRejectedError,
    RequestState,
    RunComfyClient,
    RunComfyError,
    SubmitOutcomeUnknownError,
    UnexpectedResponseError,
)
from airflow_provider_runcomfy.client._answers import transport_error
from airflow_provider_runcomfy.client._base import MAX_SMALL_BODY, ClientSettings, status_call
from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.emulator.bombs import gzip_bomb
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT

TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST) as c:
        yield c


# -- a 2xx submit we cannot read may have created a job: never repeated -------------------------------

UNREADABLE_2XX = {
    "truncated JSON": ("application/json", '{"request_id": "'),
    "an HTML page": ("text/html", "<html><body>Service temporarily unavailable</body></html>"),
    "an id failing the pattern": ("application/json", '{"request_id": "../../v1/models/x"}'),
    "a JSON list": ("application/json", "[]"),
}


@pytest.mark.parametrize("case", UNREADABLE_2XX)
def test_a_submit_answered_2xx_with_an_unreadable_body_is_outcome_unknown_and_not_repeated(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, case: str
) -> None:
    content_type, body = UNREADABLE_2XX[case]
    runcomfy_emulator.add_fault("submit", "bad_body", content_type=content_type, body=body)
    payload = flux_input(runcomfy_emulator)
    before = datetime.now(UTC).replace(microsecond=0)

    with pytest.raises(SubmitOutcomeUnknownError) as caught:
        client.submit(FLUX_KONTEXT_PRO_EDIT, payload)

    error = caught.value
    assert not error.retryable
    assert runcomfy_emulator.journal.count("submit") == 1  # not repeated...
    assert len(runcomfy_emulator.jobs) == 1  # ...because the job exists and will be billed
    assert error.model_id == FLUX_KONTEXT_PRO_EDIT
    assert error.input_fingerprint == input_fingerprint(FLUX_KONTEXT_PRO_EDIT, payload)
    assert error.submitted_at is not None
    assert before <= datetime.fromisoformat(error.submitted_at) <= datetime.now(UTC)
    for said in (FLUX_KONTEXT_PRO_EDIT, error.input_fingerprint, "UTC", "dashboard", "Requests"):
        assert said in error.message


async def test_the_async_client_says_the_same_of_an_unreadable_2xx_submit(
    runcomfy_emulator: RunComfyEmulator,
) -> None:
    runcomfy_emulator.add_fault("submit", "bad_body", body="<html>", content_type="text/html")
    async with AsyncRunComfyClient(
        runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST
    ) as client:
        with pytest.raises(SubmitOutcomeUnknownError) as caught:
            await client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert caught.value.model_id == FLUX_KONTEXT_PRO_EDIT
    assert runcomfy_emulator.journal.count("submit") == 1
    assert len(runcomfy_emulator.jobs) == 1


def test_a_read_answered_2xx_unreadably_is_an_unexpected_response(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault("status", "bad_body")
    with pytest.raises(UnexpectedResponseError, match="HTTP 200"):
        client.get_status("abc")


# -- bodies are capped, on both paths, and read no further than the cap ------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_an_oversized_status_answer_is_refused_at_the_cap(
    runcomfy_emulator: RunComfyEmulator, use_async: bool
) -> None:
    padding = "x" * (4 * MAX_SMALL_BODY)
    body = json.dumps({"request_id": "abc", "status": "in_queue", "padding": padding})
    runcomfy_emulator.add_fault("status", "bad_body", body=body)
    settings = {"base_url": runcomfy_emulator.base_url, "retry": FAST}

    async def read() -> object:
        if use_async:
            async with AsyncRunComfyClient(runcomfy_emulator.token, **settings) as aclient:
                return await aclient.get_status("abc")
        with RunComfyClient(runcomfy_emulator.token, **settings) as client:
            return client.get_status("abc")

    with pytest.raises(UnexpectedResponseError, match=f"larger than {MAX_SMALL_BODY} bytes"):
        await read()


def test_a_result_with_thousands_of_outputs_still_fits(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    urls = [
        f"https://cdn.runcomfy.net/o/{request_id}/{n}.png?X-Amz-Signature={'f' * 64}" for n in range(5000)
    ]
    body = json.dumps({"request_id": request_id, "status": "succeeded", "output": {"images": urls}})
    runcomfy_emulator.add_fault("result", "bad_body", body=body)
    assert client.get_result(request_id).output_urls == urls


class _BombServer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and a JSON "status" that is a gzip-of-gzip bomb (1 GiB inflated)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip, gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bomb_server() -> Iterator[str]:
    _BombServer.body = gzip_bomb(1 << 30)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BombServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


API_BOMB = """
import asyncio
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy, RunComfyClient

def run(base_url, path):
    retry = RetryPolicy(max_attempts=1)
    if path == "async":
        async def read():
            async with AsyncRunComfyClient("tok", base_url=base_url, retry=retry) as client:
                return await client.get_status("abc")
        return asyncio.run(read())
    with RunComfyClient("tok", base_url=base_url, retry=retry) as client:
        return client.get_status("abc")
"""


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_gzip_bomb_as_an_api_answer_costs_no_more_than_the_cap(bomb_server: str, path: str) -> None:
    # Before: the answer was inflated whole (1 GiB) before anything counted it.
    measured = peak_rss_growth(API_BOMB, bomb_server, path)
    assert measured.outcome.startswith("UnexpectedResponseError")
    assert f"larger than {MAX_SMALL_BODY} bytes" in measured.outcome
    assert measured.growth_mb < 50, measured


# -- error texts are cut where they are built ---------------------------------------------------------


def test_a_long_error_detail_is_cut_where_the_message_is_built(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    # Under the body cap (so it is read), yet far too long for a message, an event or a log line.
    detail = [{"loc": ["body", "prompt"], "msg": "y" * 90_000, "type": "value_error", "input": "z" * 90_000}]
    body = json.dumps({"error_code": 422001, "error_message": "x" * 50_000, "detail": detail})
    runcomfy_emulator.add_fault("submit", "bad_body", status=422, body=body)

    with pytest.raises(InputRejectedError) as caught:
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))

    assert "prompt: yyy" in caught.value.message
    assert len(caught.value.message) < 3000
    assert len(json.dumps(caught.value.detail)) < 3000  # what travels on (events, logs) is small too


def test_a_10_mb_error_answer_is_not_read_past_the_cap(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    detail = [{"loc": ["body", "prompt"], "msg": "y" * TEN_MB}]
    body = json.dumps({"error_code": 422001, "error_message": "x" * TEN_MB, "detail": detail})
    runcomfy_emulator.add_fault("submit", "bad_body", status=422, body=body)

    with pytest.raises(InputRejectedError) as caught:  # a 422 is a refusal: no job, whatever it says
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))

    assert f"larger than {MAX_SMALL_BODY} bytes" in caught.value.message
    assert len(caught.value.message) < 3000 and caught.value.detail is None


def test_a_10_mb_error_message_on_a_read_is_cut(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault("status", "http", status=403, error_message="x" * TEN_MB)
    with pytest.raises(RunComfyError) as caught:
        client.get_status("abc")
    assert len(caught.value.message) < 3000


def test_a_failed_jobs_10_mb_error_is_cut(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="explode", fail_message="GPU fell over " + "x" * TEN_MB)
    payload = {**flux_input(runcomfy_emulator), "prompt": "explode"}
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, payload).request_id

    result = client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 30)

    assert result.status is RequestState.FAILED
    assert result.error_message is not None and result.error_message.startswith("GPU fell over")
    assert len(result.error_message) < 5000
    assert len(str(result.error)) < 5000


def test_a_transport_error_text_is_cut_and_never_shows_the_token() -> None:
    settings = ClientSettings.create("rc-SECRET-token", base_url="http://127.0.0.1:1")
    import base64

    leaked = (
        "rc-SECRET-token Bearer%20rc-SECRET-token "
        + base64.b64encode(b"Bearer rc-SECRET-token").decode()
        + " "
        + "z" * 100_000
    )
    error = transport_error(status_call("abc"), httpx.ReadError(leaked), settings)
    assert "SECRET" not in error.message
    assert base64.b64encode(b"Bearer rc-SECRET-token").decode() not in error.message
    assert len(error.message) < 1000
