"""A pre-signed URL that RunComfy quotes in a text loses its signature where the client builds the error.

Real HTTP against the emulator: it answers with error texts (and fails jobs with messages)
that quote a signed input URL, as RunComfy does; whatever the client hands upwards -- the
error's message and ``detail``, the result's ``error``, the outcome and its trigger event --
must no longer hold the signature, while still saying which URL failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from _helpers_hostile import FAST, flux_input

from airflow_provider_runcomfy.client import (
    InputRejectedError,
    JobFailedError,
    Outcome,
    RequestState,
    RunComfyClient,
    RunComfyError,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT

SIGNATURE = "9f2c4e7a1b3d5f6081726354a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0"
TOKEN = "FwoGZXIvYXdzEJr-session-token-EXAMPLE"
SIGNED = (
    "https://bucket.s3.amazonaws.com/inputs/cat.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Security-Token={TOKEN}"
    f"&X-Amz-Signature={SIGNATURE}"
)
#: The same, on a host that never resolves: the emulator fails the job quoting it, as RunComfy does.
SIGNED_UNREACHABLE = SIGNED.replace("bucket.s3.amazonaws.com", "bucket.invalid")


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(
        token=runcomfy_emulator.token, base_url=runcomfy_emulator.base_url, retry=FAST
    ) as client:
        yield client


def assert_no_credential(*texts: object) -> None:
    for text in texts:
        shown = text if isinstance(text, str) else json.dumps(text, default=repr)
        for secret in (SIGNATURE, TOKEN, "AKIAEXAMPLE"):
            assert secret not in shown, shown


def test_an_error_message_quoting_a_signed_url_is_redacted(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault(
        "submit", "http", status=400, error_message=f"cannot download image_url {SIGNED}: AccessDenied"
    )

    with pytest.raises(RunComfyError) as caught:
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))

    assert_no_credential(caught.value.message, str(caught.value), repr(caught.value))
    assert "https://bucket.s3.amazonaws.com/inputs/cat.png?" in caught.value.message
    assert "X-Amz-Signature=***" in caught.value.message


def test_a_422_detail_quoting_a_signed_url_is_redacted_in_message_and_detail(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    detail = [{"loc": ["body", "image_url"], "msg": f"not an image: {SIGNED}", "type": "value_error"}]
    body = json.dumps({"error_code": 422001, "error_message": f"bad input {SIGNED}", "detail": detail})
    runcomfy_emulator.add_fault("submit", "bad_body", status=422, body=body)

    with pytest.raises(InputRejectedError) as caught:
        client.submit(FLUX_KONTEXT_PRO_EDIT, flux_input(runcomfy_emulator))

    assert_no_credential(caught.value.message, caught.value.detail)
    assert "image_url: not an image: https://bucket.s3.amazonaws.com/inputs/cat.png?" in caught.value.message


def test_a_job_failed_on_a_signed_input_url_says_which_url_without_its_signature(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    payload = {"prompt": "make it blue", "image_url": SIGNED_UNREACHABLE}
    request_id = client.submit(FLUX_KONTEXT_PRO_EDIT, payload).request_id

    result = client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 60)

    assert result.status is RequestState.FAILED
    outcome = Outcome.from_result(result, FLUX_KONTEXT_PRO_EDIT)
    error = outcome.to_error()
    assert_no_credential(
        result.error, result.error_message, outcome.message, outcome.to_event(), error.message
    )
    assert isinstance(error, JobFailedError)
    assert result.error_message is not None
    assert "could not fetch image_url https://bucket.invalid/inputs/cat.png?" in result.error_message
    assert "X-Amz-Signature=***: host not found" in result.error_message


def test_the_emulator_itself_quotes_the_whole_signed_url_so_the_test_above_can_fail(
    runcomfy_emulator: RunComfyEmulator,
) -> None:
    """Checks the fixture, not the provider: without redaction the signature would reach the client."""
    import httpx

    headers = {"Authorization": f"Bearer {runcomfy_emulator.token}"}
    with httpx.Client(base_url=runcomfy_emulator.base_url, headers=headers) as api:
        submitted = api.post(
            f"/v1/models/{FLUX_KONTEXT_PRO_EDIT}", json={"prompt": "x", "image_url": SIGNED_UNREACHABLE}
        )
        request_id = submitted.json()["request_id"]
        deadline = time.monotonic() + 60
        while (answer := api.get(f"/v1/requests/{request_id}/result").json())["status"] != "failed":
            assert time.monotonic() < deadline, f"the job never failed: {answer}"
            time.sleep(0.05)

    assert SIGNATURE in answer["error"]["message"]
