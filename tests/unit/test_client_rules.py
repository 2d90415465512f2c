"""The client's rules that need no server: ids, base URLs, retry timing, output normalisation."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from airflow_provider_runcomfy.client import (
    AuthenticationError,
    InvalidInputError,
    RequestResult,
    RequestState,
    RequestStatus,
    RetryPolicy,
    RunComfyClient,
    TransportError,
    validate_base_url,
    validate_model_id,
    validate_request_id,
)
from airflow_provider_runcomfy.client._base import BearerAuth
from airflow_provider_runcomfy.client.outcome import Finality, finality
from airflow_provider_runcomfy.client.retry import parse_retry_after


@pytest.mark.parametrize("request_id", ["a", "A-b_9", "x" * 128, "0f8a2c1e-3b7d-4e21-9a44-1c2d3e4f5a6b"])
def test_valid_request_ids_pass(request_id: str) -> None:
    assert validate_request_id(request_id) == request_id


@pytest.mark.parametrize(
    "request_id", ["", "x" * 129, "../status", "a/b", "a b", "a?b", "a%2F", "ü", None, 12]
)
def test_request_ids_that_could_change_a_url_are_refused(request_id: object) -> None:
    with pytest.raises(InvalidInputError, match="Invalid RunComfy request id"):
        validate_request_id(request_id)


@pytest.mark.parametrize(
    "model_id", ["google/nano-banana/edit", "blackforestlabs/flux-1-kontext/pro/edit", "a.b_c-d"]
)
def test_valid_model_ids_pass(model_id: str) -> None:
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize(
    "model_id", ["", "/google/x", "google//x", "google/x/", "google/../x", "./x", "a b/c", "a?b", "a#b", None]
)
def test_model_ids_with_bad_segments_are_refused(model_id: object) -> None:
    with pytest.raises(InvalidInputError, match="Invalid RunComfy model id"):
        validate_model_id(model_id)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://model-api.runcomfy.net", "https://model-api.runcomfy.net"),
        ("https://model-api.runcomfy.net/", "https://model-api.runcomfy.net"),
        ("model-api.runcomfy.net", "https://model-api.runcomfy.net"),
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
        ("http://localhost:8188", "http://localhost:8188"),
        ("http://[::1]:8188", "http://[::1]:8188"),
    ],
)
def test_base_urls_accepted(given: str, expected: str) -> None:
    assert validate_base_url(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "http://model-api.runcomfy.net",
        "http://10.0.0.5:8188",
        "ftp://x",
        "https://user:pw@host",
        "https://h/?q=1",
    ],
)
def test_base_urls_refused(given: str) -> None:
    with pytest.raises(InvalidInputError, match="Invalid RunComfy base URL"):
        validate_base_url(given)


def test_refused_base_url_message_does_not_echo_credentials() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_base_url("https://user:hunter2@host")
    assert "hunter2" not in str(caught.value)


def test_an_empty_token_is_refused_before_any_request() -> None:
    with pytest.raises(AuthenticationError, match="No RunComfy API token"):
        RunComfyClient("  ")


def test_bearer_auth_sends_the_token_only_to_the_api_origin() -> None:
    auth = BearerAuth("tok-123", "https://model-api.runcomfy.net")

    def authorization(url: str) -> str | None:
        request = httpx.Request("GET", url)
        return next(auth.auth_flow(request)).headers.get("Authorization")

    assert authorization("https://model-api.runcomfy.net/v1/requests/a/status") == "Bearer tok-123"
    assert authorization("https://cdn.runcomfy.net/out.png") is None
    assert authorization("http://model-api.runcomfy.net/v1/x") is None  # other scheme, other origin
    assert authorization("https://model-api.runcomfy.net:8443/v1/x") is None
    assert "tok-123" not in repr(auth)


def test_retry_after_in_seconds_and_as_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= (parse_retry_after(in_ten) or 0) <= 10.0
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=10), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_backoff_is_full_jitter_below_a_doubling_ceiling_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, max_retry_after=30.0)
    for retry_number, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.backoff(retry_number) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # it does use the range, not a constant
    assert policy.backoff(1, retry_after=7.0) == 7.0
    assert policy.backoff(1, retry_after=600.0) == 30.0


def test_output_urls_are_normalised_from_every_output_key() -> None:
    result = RequestResult(
        request_id="r1",
        status=RequestState.SUCCEEDED,
        output={
            "image": "https://cdn/a.png",
            "images": ["https://cdn/b.png", "https://cdn/a.png"],
            "video": "https://cdn/c.mp4",
            "videos": ["https://cdn/d.mp4"],
            "seed": 42,
        },
    )
    assert result.output_urls == [
        "https://cdn/a.png",
        "https://cdn/b.png",
        "https://cdn/c.mp4",
        "https://cdn/d.mp4",
    ]
    assert RequestResult(request_id="r2", status=RequestState.IN_QUEUE).output_urls == []


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ("boom", "boom"),
        ({"message": "NSFW content detected"}, "NSFW content detected"),
        ({"error_message": "GPU lost"}, "GPU lost"),
        ([{"msg": "a"}, {"msg": "b"}], "a; b"),
        (None, None),
    ],
)
def test_failed_job_reasons_of_any_shape_become_text(error: object, text: str | None) -> None:
    result = RequestResult(request_id="r", status=RequestState.FAILED, error=error)
    assert result.error_message == text


def test_only_queued_and_running_states_mean_keep_waiting() -> None:
    waiting = {
        s for s in RequestState if finality(RequestStatus(request_id="r", status=s)) is Finality.WAITING
    }
    assert waiting == {RequestState.IN_QUEUE, RequestState.IN_PROGRESS}


def test_a_refused_connection_is_retried_then_named() -> None:
    """A connect error never reached RunComfy: reads retry it, and the final error says what to check."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again on exit: nothing listens there
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    client = RunComfyClient("tok", base_url=f"http://127.0.0.1:{port}", retry=policy)
    with client, pytest.raises(TransportError, match="Could not reach RunComfy") as caught:
        client.get_status("abc")
    assert caught.value.request_sent is False
