"""The client against the emulator over real HTTP: every call, every documented error, every retry rule."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from airflow_provider_runcomfy.client import (
    AsyncRunComfyClient,
    RequestState,
    RetryPolicy,
    RunComfyClient,
    errors,
)
from airflow_provider_runcomfy.client.outcome import Finality, finality
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_total=20)


def flux_input(emu: RunComfyEmulator, prompt: str = "make it blue") -> dict[str, str]:
    return {"prompt": prompt, "image_url": emu.sample_url("portrait")}


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST_RETRY) as c:
        yield c


def test_submit_status_result_round_trip(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_rule(hold=True)  # queued until released below: no bet on the clock
    submitted = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert submitted.status_url and submitted.status_url.endswith(
        f"/v1/requests/{submitted.request_id}/status"
    )

    status = client.get_status(submitted.request_id)
    assert status.status is RequestState.IN_QUEUE
    assert status.queue_position is not None

    assert runcomfy_emulator.release() == [submitted.request_id]
    result = client.wait_for_result(submitted.request_id, poll_interval=0.1, deadline=time.time() + 10)
    assert result.status is RequestState.SUCCEEDED
    (url,) = result.output_urls
    assert url.startswith(runcomfy_emulator.base_url)
    assert result.created_at and result.finished_at
    submit = runcomfy_emulator.journal.last("submit")
    assert submit is not None
    assert submit.json == flux_input(runcomfy_emulator)
    assert submit.headers["authorization"] == f"Bearer {runcomfy_emulator.token}"


def test_nano_banana_returns_every_image(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    payload = {"prompt": "p", "image_urls": [runcomfy_emulator.sample_url("street")], "num_images": 3}
    request_id = client.submit(NANO_BANANA_EDIT, payload).request_id
    result = client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    assert len(result.output_urls) == 3


def test_result_with_cost(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    result = client.get_result(request_id, include_cost=True)
    assert result.cost is not None
    assert result.model_id == FLUX_KONTEXT_PRO_EDIT


def test_result_reads_ask_for_the_cost_by_default(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    result = client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    assert result.cost is not None and result.model_id == FLUX_KONTEXT_PRO_EDIT
    assert client.get_result(request_id).cost == result.cost
    assert {e.query.get("include_cost") for e in runcomfy_emulator.journal.of("result")} == {"true"}


async def test_the_async_wait_asks_for_the_cost_too(runcomfy_emulator: RunComfyEmulator) -> None:
    async with AsyncRunComfyClient(
        runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST_RETRY
    ) as client:
        request_id = (await client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))).request_id
        result = await client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    assert result.cost is not None
    assert {e.query.get("include_cost") for e in runcomfy_emulator.journal.of("result")} == {"true"}


def test_cancel_while_queued_and_after_it_started(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    rule = runcomfy_emulator.add_rule(prompt_contains="held", hold=True)
    queued = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator, "held")).request_id
    assert rule.hold and runcomfy_emulator.job(queued).phase == "in_queue"
    assert client.cancel(queued).cancelled
    assert client.get_result(queued).status is RequestState.CANCELLED

    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=30)
    running = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    response = client.cancel(running)
    assert not response.cancelled
    assert response.outcome == "not_cancellable"


def test_model_info(client: RunComfyClient) -> None:
    info = client.get_model(NANO_BANANA_EDIT)
    assert info.base_price_usd is not None


def test_wait_reports_a_failed_job_with_its_reason(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="explode", fail_message="GPU fell over")
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator, "explode")).request_id
    seen: list[RequestState] = []
    result = client.wait_for_result(
        request_id, poll_interval=0.1, deadline=time.time() + 10, on_status=lambda s: seen.append(s.status)
    )
    assert result.status is RequestState.FAILED
    assert result.error_message == "GPU fell over"
    assert seen[0] is RequestState.IN_QUEUE
    assert seen[-1] is RequestState.COMPLETED  # /status says completed; only /result says failed


def test_wait_gives_up_at_the_deadline(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_rule(hold=True)  # never finishes: only the deadline can end the wait
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    with pytest.raises(errors.JobTimeoutError, match="did not finish before the deadline"):
        client.wait_for_result(request_id, poll_interval=0.2, deadline=time.time() + 1)
    polls = runcomfy_emulator.journal.count("status")
    # Polled at its interval until the deadline, then stopped: one poll per interval, plus the
    # first one and a last look at the deadline (a wait that ignored the interval polls hundreds).
    assert 1 <= polls <= round(1 / 0.2) + 2
    assert runcomfy_emulator.job(request_id).phase == "in_queue"


@pytest.mark.parametrize("failed_word", ["completed", "failed"])
def test_a_failed_job_is_recognised_whatever_status_says(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, failed_word: str
) -> None:
    runcomfy_emulator.set_config(failed_status_word=failed_word)
    runcomfy_emulator.add_rule(prompt_contains="bad", fail_message="nope")
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator, "bad")).request_id
    result = client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    assert result.status is RequestState.FAILED


# -- the documented error codes -------------------------------------------------------------------


def test_400001_unknown_model(client: RunComfyClient) -> None:
    with pytest.raises(errors.InvalidModelError, match="error 400001") as caught:
        client.submit("example/unknown-model", {"prompt": "x"})
    assert caught.value.error_code == 400001


def test_400002_no_balance(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.set_config(balance_usd=0.0)
    with pytest.raises(errors.InsufficientBalanceError, match="no balance left.*top up"):
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert runcomfy_emulator.journal.count("submit") == 1  # refused, not retried


def test_400004_bad_token_points_at_the_credential(runcomfy_emulator: RunComfyEmulator) -> None:
    hint = "the password (API token) of Airflow connection 'runcomfy_default'"
    with RunComfyClient("wrong-token", base_url=runcomfy_emulator.base_url, credential_hint=hint) as client:
        with pytest.raises(errors.AuthenticationError, match="error 400004") as caught:
            client.get_status("abc")
    assert hint in caught.value.message
    assert runcomfy_emulator.journal.count("status") == 1  # no retry of a permanent error


def test_403001_request_of_another_user(runcomfy_emulator: RunComfyEmulator, client: RunComfyClient) -> None:
    runcomfy_emulator.set_config(extra_tokens=["other-user-token"])
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    with RunComfyClient("other-user-token", base_url=runcomfy_emulator.base_url) as other:
        with pytest.raises(errors.PermissionDeniedError, match="error 403001"):
            other.get_result(request_id)


def test_404001_unknown_or_expired_request(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    with pytest.raises(errors.RequestNotFoundError, match="error 404001.*expired"):
        client.get_status("no-such-request")
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    runcomfy_emulator.expire(request_id)
    with pytest.raises(errors.RequestNotFoundError):
        client.get_result(request_id)


def test_422001_input_rejected_names_the_fields(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    with pytest.raises(errors.InputRejectedError, match="error 422001") as caught:
        client.submit(NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [], "num_images": 9})
    assert "image_urls" in caught.value.message
    assert "num_images" in caught.value.message
    assert caught.value.detail


def test_500001_is_retried_on_reads(client: RunComfyClient, runcomfy_emulator: RunComfyEmulator) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    runcomfy_emulator.add_fault("status", "http", times=2, status=500, error_code=500001)
    assert client.get_status(request_id).request_id == request_id
    assert runcomfy_emulator.journal.count("status") == 3


def test_500001_persisting_ends_as_a_server_error(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault("status", "http", times=10, status=500, error_code=500001)
    with pytest.raises(errors.ServerError, match="error 500001"):
        client.get_status("abc")
    assert runcomfy_emulator.journal.count("status") == FAST_RETRY.max_attempts


# -- retries ---------------------------------------------------------------------------------------


def test_429_is_retried_after_the_retry_after_it_asks_for(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    runcomfy_emulator.add_fault("status", "http", times=1, status=429, retry_after=1)
    started = time.monotonic()
    client.get_status(request_id)
    assert time.monotonic() - started >= 0.95  # FAST_RETRY alone would wait <= 0.05 s
    assert runcomfy_emulator.journal.count("status") == 2


@pytest.mark.parametrize(
    ("endpoint", "kind", "fault", "error", "match"),
    [
        ("result", "http", {"times": 10, "status": 429}, errors.RateLimitedError, "pool"),
        # HTTP 200 carrying an error code is that error, not a success.
        ("status", "error_200", {"error_code": 404001}, errors.RequestNotFoundError, "404001"),
    ],
)
def test_a_read_answered_with_an_error_raises_it(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    endpoint: str,
    kind: str,
    fault: dict[str, int],
    error: type[Exception],
    match: str,
) -> None:
    runcomfy_emulator.add_fault(endpoint, kind, **fault)
    with pytest.raises(error, match=match):
        getattr(client, f"get_{endpoint}")("abc")


@pytest.mark.parametrize(
    ("endpoint", "kind", "fault"),
    [
        *[("result", "http", {"times": 3, "status": status}) for status in (500, 502, 503, 504)],
        ("status", "drop", {"times": 1}),
        ("status", "error_200", {"times": 1, "error_code": 500001}),  # retried like a server error
    ],
    ids=["500", "502", "503", "504", "dropped-connection", "error-500001-in-a-200"],
)
def test_a_read_that_fails_for_a_while_is_retried(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    endpoint: str,
    kind: str,
    fault: dict[str, int],
) -> None:
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    runcomfy_emulator.add_fault(endpoint, kind, **fault)
    assert getattr(client, f"get_{endpoint}")(request_id).request_id == request_id
    assert runcomfy_emulator.journal.count(endpoint) == fault["times"] + 1


def test_a_slow_read_times_out_and_is_retried(runcomfy_emulator: RunComfyEmulator) -> None:
    with RunComfyClient(
        runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, read_timeout=0.3, retry=FAST_RETRY
    ) as client:
        request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
        runcomfy_emulator.add_fault("status", "delay", times=1, seconds=1.0)
        assert client.get_status(request_id).request_id == request_id


# -- a submit is paid: never repeated once it may have reached RunComfy ------------------------------


def test_a_submit_that_hit_a_read_timeout_is_not_repeated(runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_fault("submit", "delay", times=1, seconds=1.5)
    with (
        RunComfyClient(
            runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, read_timeout=0.3, retry=FAST_RETRY
        ) as client,
        pytest.raises(errors.SubmitOutcomeUnknownError, match="may have created a job.*billed twice"),
    ):
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert runcomfy_emulator.journal.count("submit") == 1
    assert len(runcomfy_emulator.jobs) == 1  # the job exists: that is why it was not repeated


@pytest.mark.parametrize(("kind", "status"), [("http", 500), ("http", 503), ("drop", None)])
def test_a_submit_answered_by_a_server_error_or_a_drop_is_not_repeated(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, kind: str, status: int | None
) -> None:
    runcomfy_emulator.add_fault("submit", kind, times=1, status=status)
    with pytest.raises(errors.SubmitOutcomeUnknownError):
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert runcomfy_emulator.journal.count("submit") == 1


def test_a_submit_refused_with_429_is_retried(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault("submit", "http", times=2, status=429, retry_after=0)
    client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert runcomfy_emulator.journal.count("submit") == 3
    assert len(runcomfy_emulator.jobs) == 1


def test_a_submit_that_could_not_connect_is_retried_then_named(runcomfy_emulator: RunComfyEmulator) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RunComfyClient("tok", base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY)
    with client, pytest.raises(errors.TransportError, match="Could not reach RunComfy") as caught:
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert not caught.value.request_sent


# -- bad input costs nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["../../v1/models/x", "a/b", "", "x" * 200, "a b"])
def test_invalid_request_ids_are_refused_before_any_request(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, request_id: str
) -> None:
    for call in (client.get_status, client.get_result, client.cancel):
        with pytest.raises(errors.InvalidInputError):
            call(request_id)
    assert runcomfy_emulator.journal.count() == 0


@pytest.mark.parametrize("model_id", ["../admin", "google/../x", "a//b", "", "a?b=1"])
def test_invalid_model_ids_are_refused_before_any_request(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, model_id: str
) -> None:
    with pytest.raises(errors.InvalidInputError):
        client.submit(model_id, {"prompt": "x"})
    with pytest.raises(errors.InvalidInputError):
        client.get_model(model_id)
    assert runcomfy_emulator.journal.count() == 0


# -- the async twin -------------------------------------------------------------------------------


async def test_async_client_round_trip_and_errors(runcomfy_emulator: RunComfyEmulator) -> None:
    async with AsyncRunComfyClient(
        runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST_RETRY
    ) as client:
        request_id = (await client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))).request_id
        assert finality(await client.get_status(request_id)) is Finality.WAITING
        runcomfy_emulator.add_fault("status", "http", times=2, status=503)
        result = await client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
        assert result.status is RequestState.SUCCEEDED
        assert (await client.cancel(request_id)).outcome == "not_cancellable"
        assert (await client.get_model(FLUX_KONTEXT_PRO_EDIT)).base_price_usd is not None
        with pytest.raises(errors.RequestNotFoundError):
            await client.get_result("missing")
        runcomfy_emulator.add_fault("submit", "http", times=1, status=502)
        with pytest.raises(errors.SubmitOutcomeUnknownError):
            await client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))
    assert runcomfy_emulator.journal.count("submit") == 2
