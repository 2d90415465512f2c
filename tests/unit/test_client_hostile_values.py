"""Values in answers (and a token) that must not hurt: Retry-After, output lists, costs, header characters.

Real HTTP against the emulator where a request is made; the parsers are also
fed the values directly. Bodies, bombs and error texts: ``test_client_hostile``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from _helpers_hostile import FAST, flux_input

from airflow_provider_runcomfy.client import (
    AsyncRunComfyClient,
    AuthenticationError,
    RateLimitedError,
    RequestResult,
    RunComfyClient,
)
from airflow_provider_runcomfy.client._pool import shared_client
from airflow_provider_runcomfy.client._transport import AiohttpTransport
from airflow_provider_runcomfy.client.models import MAX_OUTPUTS
from airflow_provider_runcomfy.client.retry import parse_retry_after
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST) as c:
        yield c


# -- the output list: linear, and capped -----------------------------------------------------------


class CountingURL(str):
    """A URL that counts how often it is compared for equality (what a list membership test does)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountingURL.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_output_urls_are_deduplicated_in_linear_time() -> None:
    urls = [CountingURL(f"https://cdn.runcomfy.net/o/{n}.png") for n in range(MAX_OUTPUTS - 2)]
    output = {"image": urls[0], "images": [*urls, urls[1]]}  # each repeated once
    result = RequestResult.model_validate({"request_id": "r", "status": "succeeded", "output": output})
    CountingURL.comparisons = 0

    got = result.output_urls

    # A list membership test per URL compared ~n^2 / 2 = 50 million times; a dict, about once each.
    assert CountingURL.comparisons < 3 * MAX_OUTPUTS
    assert got == urls


def test_a_result_listing_more_outputs_than_the_cap_is_refused() -> None:
    with pytest.raises(ValueError, match=f"more than the {MAX_OUTPUTS}"):
        RequestResult.model_validate(
            {"request_id": "r", "status": "succeeded", "output": {"images": ["u"] * (MAX_OUTPUTS + 1)}}
        )


# -- Retry-After that is not a number of seconds ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("1e400", None),
        ("-5", 0.0),
        ("1e30", 86400.0),
    ],
)
def test_retry_after_that_is_not_a_finite_delay_is_ignored_or_clamped(
    header: str, seconds: float | None
) -> None:
    assert parse_retry_after(header) == seconds
    assert 0 <= FAST.backoff(1, parse_retry_after(header)) <= FAST.max_retry_after


@pytest.mark.parametrize("header", ["nan", "inf", "-1", "soon"])
def test_a_429_with_a_nonsense_retry_after_is_retried_with_backoff(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, header: str
) -> None:
    runcomfy_emulator.add_fault("status", "http", status=429, headers={"Retry-After": header})
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator)).request_id
    assert client.get_status(request_id).request_id == request_id  # before: ValueError from sleep(nan)
    assert runcomfy_emulator.journal.count("status") == 2


async def test_the_async_client_backs_off_on_retry_after_nan(runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_fault("status", "http", times=None, status=429, headers={"Retry-After": "nan"})
    async with AsyncRunComfyClient(
        runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST
    ) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.get_status("abc")
    assert caught.value.retry_after is None  # so the backoff is the policy's own, never nan
    assert runcomfy_emulator.journal.count("status") == FAST.max_attempts


# -- a token a header cannot carry ---------------------------------------------------------------


BAD_TOKENS = ["rc-abc\ndef", "rc-abc\r\nX-Injected: 1", "rc-abc\x00def", "rc-abc\tdef", "rc-äbc", "rc-ab c"]


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_a_token_with_characters_a_header_cannot_carry_is_refused_without_showing_it(
    runcomfy_emulator: RunComfyEmulator, token: str
) -> None:
    hint = "the password of Airflow connection 'runcomfy_default'"
    for make in (
        lambda: RunComfyClient(token, base_url=runcomfy_emulator.base_url, credential_hint=hint),
        lambda: AsyncRunComfyClient(token, base_url=runcomfy_emulator.base_url, credential_hint=hint),
    ):
        with pytest.raises(AuthenticationError) as caught:
            make()
        assert hint in caught.value.message
        assert "abc" not in caught.value.message and "abc" not in repr(caught.value)
    with pytest.raises(AuthenticationError):  # the triggerer's shared client: no raw ValueError
        async with shared_client("runcomfy_default", token, base_url=runcomfy_emulator.base_url):
            pass
    assert runcomfy_emulator.journal.count() == 0


async def test_the_async_transport_never_raises_a_raw_value_error(
    runcomfy_emulator: RunComfyEmulator,
) -> None:
    transport = AiohttpTransport()
    request = httpx.Request(
        "GET",
        f"{runcomfy_emulator.base_url}/v1/requests/abc/status",
        headers={"Authorization": "Bearer a\nb"},
    )
    try:
        with pytest.raises(httpx.LocalProtocolError) as caught:
            await transport.handle_async_request(request)
    finally:
        await transport.aclose()
    assert "a\nb" not in str(caught.value)
    assert runcomfy_emulator.journal.count() == 0


@pytest.mark.parametrize(
    ("cost", "read"), [(0.05, 0.05), ("0.3", 0.3), (float("nan"), None), (-1, None), (True, None)]
)
def test_a_cost_that_is_not_a_finite_amount_is_not_said(cost: object, read: float | None) -> None:
    result = RequestResult.model_validate({"request_id": "r", "status": "succeeded", "cost": cost})
    assert result.cost == read
