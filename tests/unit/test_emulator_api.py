"""The emulator speaks RunComfy's Model API: a job's life, and what each endpoint answers.

Real HTTP on 127.0.0.1 against a started emulator. Tests about exact
timing use an emulator with a fake clock (``clocked``, in conftest.py);
the others use the session emulator from the pytest plugin, reset for
each test. The documented errors are in test_emulator_errors.py.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import httpx
import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"
FLUX_INPUT = {"prompt": "make the sky purple", "image_url": "https://example.com/street.png"}
NANO_INPUT = {"prompt": "a poster", "image_urls": ["https://example.com/a.png"]}


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    """The plugin's timings (queue 0.2 s, run 0.5 s): these tests watch jobs move."""
    return runcomfy_emulator


def submit(api: httpx.Client, model_id: str = FLUX, payload: dict | None = None) -> str:
    response = api.post(f"/v1/models/{model_id}", json=FLUX_INPUT if payload is None else payload)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def wait_finished(api: httpx.Client, request_id: str, timeout: float = 10.0) -> list[str]:
    """Poll /status until the job leaves the queue and the run; return every status seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.get(f"/v1/requests/{request_id}/status").json()["status"]
        seen.append(status)
        if status not in ("in_queue", "in_progress"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {request_id} still unfinished after {timeout} s: {seen[-3:]}")


def test_a_job_is_queued_then_runs_then_completes(clocked):
    _emu, clock, api = clocked
    request_id = submit(api)
    start = clock.now

    status = api.get(f"/v1/requests/{request_id}/status").json()
    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert (status["status"], status["queue_position"]) == ("in_queue", 0)
    assert result["status"] == "in_queue"
    assert "output" not in result
    assert result["finished_at"] is None

    clock.now = start + 10.0
    status = api.get(f"/v1/requests/{request_id}/status").json()
    assert status["status"] == "in_progress"
    assert "queue_position" not in status
    assert api.get(f"/v1/requests/{request_id}/result").json()["status"] == "in_progress"

    clock.now = start + 29.9
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "in_progress"

    clock.now = start + 30.0
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "completed"
    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert result["status"] == "succeeded"
    created = datetime.fromisoformat(result["created_at"])
    finished = datetime.fromisoformat(result["finished_at"])
    assert created.utcoffset() is not None
    assert created.utcoffset().total_seconds() == 0
    assert (finished - created).total_seconds() == pytest.approx(30.0)


def test_a_job_completes_on_the_real_clock_in_order(emu, api):
    emu.set_config(queue_seconds=0.3, run_seconds=0.3)
    began = time.monotonic()
    request_id = submit(api)
    seen = wait_finished(api, request_id)

    order = {"in_queue": 0, "in_progress": 1, "completed": 2}
    assert seen[-1] == "completed"
    assert [order[s] for s in seen] == sorted(order[s] for s in seen)
    assert time.monotonic() - began >= 0.6


def test_queue_position_counts_the_queued_jobs_ahead(clocked):
    _emu, _clock, api = clocked
    first, second, third = submit(api), submit(api), submit(api)

    def position(request_id: str) -> int:
        return api.get(f"/v1/requests/{request_id}/status").json()["queue_position"]

    assert [position(first), position(second), position(third)] == [0, 1, 2]
    api.post(f"/v1/requests/{first}/cancel")
    assert [position(second), position(third)] == [0, 1]


def test_submit_answers_the_request_id_and_absolute_urls(emu, api):
    body = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT).json()

    request_id = body["request_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", request_id)
    base = f"{emu.base_url}/v1/requests/{request_id}"
    assert body == {
        "request_id": request_id,
        "status_url": f"{base}/status",
        "result_url": f"{base}/result",
        "cancel_url": f"{base}/cancel",
    }


def test_public_url_is_used_in_returned_urls(emu, api):
    emu.set_config(public_url="https://emulator.example/", queue_seconds=0, run_seconds=0)
    request_id = submit(api)

    body = api.get(f"/v1/requests/{request_id}/status").json()
    assert body["status_url"] == f"https://emulator.example/v1/requests/{request_id}/status"
    image = api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"]
    assert image == f"https://emulator.example/files/{request_id}/0.png"


def test_result_of_flux_is_one_image_url(emu, api):
    emu.set_config(queue_seconds=0, run_seconds=0)
    request_id = submit(api)

    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert set(result) == {"request_id", "status", "output", "created_at", "finished_at"}
    assert result["output"] == {"image": f"{emu.base_url}/files/{request_id}/0.png"}


def test_result_of_nano_banana_has_num_images_urls(emu, api):
    emu.set_config(queue_seconds=0, run_seconds=0)
    request_id = submit(api, NANO, {**NANO_INPUT, "num_images": 3, "output_format": "jpeg"})

    output = api.get(f"/v1/requests/{request_id}/result").json()["output"]
    assert output == {"images": [f"{emu.base_url}/files/{request_id}/{n}.png" for n in range(3)]}


def test_another_model_accepts_any_object_and_gives_one_image(emu, api):
    emu.set_config(queue_seconds=0, run_seconds=0)
    request_id = submit(api, "some-vendor/text-to-image", {"anything": [1, 2], "prompt": "cat"})

    output = api.get(f"/v1/requests/{request_id}/result").json()["output"]
    assert list(output) == ["image"]


@pytest.mark.parametrize(
    ("output_kind", "num_outputs", "expected_keys", "expected_count"),
    [
        ("video", None, ["video"], 1),
        ("videos", 2, ["videos"], 2),
        ("none", None, [], 0),
        (None, 2, ["images"], 2),
    ],
)
def test_a_rule_chooses_the_output_kind(emu, api, output_kind, num_outputs, expected_keys, expected_count):
    emu.set_config(queue_seconds=0, run_seconds=0)
    emu.add_rule(model_id="vendor/video-model", output_kind=output_kind, num_outputs=num_outputs)
    request_id = submit(api, "vendor/video-model", {"prompt": "a wave"})

    output = api.get(f"/v1/requests/{request_id}/result").json()["output"]
    assert list(output) == expected_keys
    urls = [u for v in output.values() for u in ([v] if isinstance(v, str) else v)]
    assert len(urls) == expected_count


def test_include_cost_adds_cost_and_model_id(emu, api):
    emu.set_config(queue_seconds=0, run_seconds=0, price_usd=0.07)
    request_id = submit(api)

    plain = api.get(f"/v1/requests/{request_id}/result").json()
    costed = api.get(f"/v1/requests/{request_id}/result", params={"include_cost": "true"}).json()
    assert "cost" not in plain
    assert "model_id" not in plain
    assert costed["cost"] == pytest.approx(0.07)
    assert costed["model_id"] == FLUX


def test_cancel_while_queued_cancels(clocked):
    _emu, clock, api = clocked
    request_id = submit(api)

    response = api.post(f"/v1/requests/{request_id}/cancel")
    assert response.status_code == 202
    assert response.json() == {"request_id": request_id, "status": "cancelled", "outcome": "cancelled"}
    clock.now += 100
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "cancelled"
    result = api.get(f"/v1/requests/{request_id}/result", params={"include_cost": "true"}).json()
    assert result["status"] == "cancelled"
    assert "output" not in result
    assert result["cost"] == 0.0
    assert result["finished_at"] is not None


def test_cancel_of_a_running_or_finished_job_is_not_cancellable(clocked):
    _emu, clock, api = clocked
    request_id = submit(api)
    clock.now += 15  # running

    response = api.post(f"/v1/requests/{request_id}/cancel")
    assert response.status_code == 202
    assert response.json() == {
        "request_id": request_id,
        "status": "in_progress",
        "outcome": "not_cancellable",
    }

    clock.now += 100  # finished: cancelling is a no-op
    response = api.post(f"/v1/requests/{request_id}/cancel")
    assert response.status_code == 202
    assert response.json()["outcome"] == "not_cancellable"
    assert api.get(f"/v1/requests/{request_id}/result").json()["status"] == "succeeded"


def test_a_failed_job_reads_completed_on_status_and_failed_on_result(emu, api):
    emu.set_config(queue_seconds=0, run_seconds=0)
    emu.add_rule(prompt_contains="explode", fail_message="the model ran out of memory")
    request_id = submit(api, FLUX, {**FLUX_INPUT, "prompt": "please explode"})

    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "completed"
    result = api.get(f"/v1/requests/{request_id}/result").json()
    assert result["status"] == "failed"
    assert "output" not in result
    assert result["error"]["message"] == "the model ran out of memory"

    emu.set_config(failed_status_word="failed")
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "failed"


def test_model_info_gives_the_price(emu, api):
    emu.set_config(price_usd=0.05)

    info = api.get(f"/v1/models/{NANO}").json()
    assert info["model_id"] == NANO
    assert info["base_price_usd"] == pytest.approx(0.05)
    assert info["price_unit"]
    assert "num_images" in info["input_schema"]["properties"]
    assert api.get("/v1/models/vendor/other").json()["model_id"] == "vendor/other"


def test_reset_forgets_jobs_and_restores_the_starting_config(emu, api):
    started_with = emu.get_config()
    request_id = submit(api)
    emu.set_config(queue_seconds=99, failed_status_word="failed")

    emu.reset()

    assert emu.jobs == []
    assert emu.get_config() == started_with
    gone = api.get(f"/v1/requests/{request_id}/status")
    assert (gone.status_code, gone.json()["error_code"]) == (404, 404001)
