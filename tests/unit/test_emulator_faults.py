"""Faults on demand, job rules and the journal: how tests make the emulator misbehave and then check.

Every fault kind is exercised over real HTTP on 127.0.0.1, including the
ones that break the connection (``drop``, ``truncate``).
"""

from __future__ import annotations

import io
import time

import httpx
import png
import pytest

from airflow_provider_runcomfy.emulator.images import PAD_CHUNK_TYPE

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
FLUX_INPUT = {"prompt": "golden hour", "image_url": "https://example.com/street.png"}


def submit(api: httpx.Client, payload: dict | None = None, model_id: str = FLUX) -> str:
    response = api.post(f"/v1/models/{model_id}", json=payload or FLUX_INPUT)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def test_a_429_with_retry_after_then_normal_answers(emu, api):
    request_id = submit(api)
    emu.add_fault("status", "http", status=429, retry_after=3, error_code=429001, error_message="slow down")

    limited = api.get(f"/v1/requests/{request_id}/status")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.json() == {"error_code": 429001, "error_message": "slow down"}
    assert api.get(f"/v1/requests/{request_id}/status").status_code == 200


def test_a_burst_of_bodyless_503_then_success(emu, api):
    request_id = submit(api)
    emu.add_fault("result", "http", status=503, times=3)

    codes = [api.get(f"/v1/requests/{request_id}/result").status_code for _ in range(4)]
    assert codes == [503, 503, 503, 200]
    assert emu.faults[0].hits == 3
    assert emu.faults[0].times == 0


def test_a_bodyless_http_fault_has_an_empty_body(emu, api):
    emu.add_fault("submit", "http", status=500)

    response = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT)
    assert response.status_code == 500
    assert response.content == b""
    assert emu.jobs == []  # an http fault on submit answers before any job exists


def test_error_200_carries_a_top_level_error_code(emu, api):
    request_id = submit(api)
    emu.add_fault("result", "error_200", error_code=500001, error_message="internal")

    response = api.get(f"/v1/requests/{request_id}/result")
    assert response.status_code == 200
    assert response.json() == {"error_code": 500001, "error_message": "internal"}


def test_a_delayed_submit_times_out_the_client_but_the_job_exists(emu, api):
    emu.add_fault("submit", "delay", seconds=1.0)

    with pytest.raises(httpx.ReadTimeout):
        api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT, timeout=0.3)
    assert len(emu.jobs) == 1
    entry = emu.journal.last("submit")
    assert entry.fault == "delay"
    assert entry.request_id == emu.jobs[0].request_id


def test_a_delayed_read_answers_normally_after_the_delay(emu, api):
    request_id = submit(api)
    emu.add_fault("status", "delay", seconds=0.4)

    began = time.monotonic()
    response = api.get(f"/v1/requests/{request_id}/status")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert time.monotonic() - began >= 0.4


def test_a_dropped_submit_loses_the_answer_but_the_job_exists(emu, api):
    emu.add_fault("submit", "drop")

    with pytest.raises(httpx.RemoteProtocolError):
        api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT)
    assert len(emu.jobs) == 1
    entry = emu.journal.last("submit")
    assert entry.fault == "drop"
    assert entry.status_code is None
    assert api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT).status_code == 200  # the server lives on


def test_a_dropped_cancel_still_cancels(emu, api):
    emu.set_config(queue_seconds=30)
    request_id = submit(api)
    emu.add_fault("cancel", "drop", request_id=request_id)

    with pytest.raises(httpx.RemoteProtocolError):
        api.post(f"/v1/requests/{request_id}/cancel")
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "cancelled"


def read_into(sink: bytearray, response: httpx.Response) -> None:
    for chunk in response.iter_bytes():
        sink += chunk


def test_a_truncated_file_sends_the_full_length_then_cuts(emu, api):
    request_id = submit(api)
    url = api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"]
    full = httpx.get(url).content
    emu.add_fault("file", "truncate", after_bytes=100)

    received = bytearray()
    with httpx.stream("GET", url) as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(full)
        with pytest.raises(httpx.RemoteProtocolError):
            read_into(received, response)
    assert bytes(received) == full[:100]
    assert httpx.get(url).content == full


def test_a_fault_for_one_request_id_spares_the_others(emu, api):
    hit, spared = submit(api), submit(api)
    emu.add_fault("any", "http", status=502, times=None, request_id=hit)

    assert api.get(f"/v1/requests/{spared}/status").status_code == 200
    assert api.get(f"/v1/requests/{hit}/status").status_code == 502
    assert api.get(f"/v1/requests/{hit}/result").status_code == 502
    assert api.get(f"/v1/requests/{hit}/status").status_code == 502  # times=None: until cleared
    emu.clear_faults()
    assert api.get(f"/v1/requests/{hit}/status").status_code == 200


def test_an_any_fault_hits_whatever_comes_next(emu, api):
    emu.add_fault("any", "http", status=500, error_code=500001)

    assert api.get(f"/v1/models/{FLUX}").json()["error_code"] == 500001
    assert api.get(f"/v1/models/{FLUX}").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"endpoint": "nowhere", "kind": "http", "status": 500}, "endpoint"),
        ({"endpoint": "status", "kind": "explode"}, "kind"),
        ({"endpoint": "status", "kind": "http"}, "status"),
        ({"endpoint": "status", "kind": "delay"}, "seconds"),
        ({"endpoint": "status", "kind": "drop", "times": 0}, "times"),
    ],
)
def test_an_impossible_fault_is_refused(emu, args, message):
    with pytest.raises(ValueError, match=message):
        emu.add_fault(**args)


def test_the_first_matching_rule_wins(emu, api):
    emu.add_rule(prompt_contains="slow", queue_seconds=60)
    emu.add_rule(prompt_contains="slow", fail_message="never used")
    emu.add_rule(model_id="vendor/flaky", fail_message="vendor down")

    slow = submit(api, {**FLUX_INPUT, "prompt": "a slow one"})
    flaky = submit(api, {"prompt": "x"}, model_id="vendor/flaky")
    plain = submit(api)

    assert api.get(f"/v1/requests/{slow}/status").json()["status"] == "in_queue"
    assert api.get(f"/v1/requests/{flaky}/result").json()["error"]["message"] == "vendor down"
    assert api.get(f"/v1/requests/{plain}/result").json()["status"] == "succeeded"
    assert [r.hits for r in emu.rules] == [1, 0, 1]


def test_a_rule_sets_the_run_time(emu, api):
    emu.add_rule(run_seconds=60)
    request_id = submit(api)

    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "in_progress"
    assert emu.job(request_id).finished_at - emu.job(request_id).created_at == pytest.approx(60)


def test_output_bytes_pads_the_png_and_it_stays_valid(emu, api):
    size = 3 * 1024 * 1024 + 123
    emu.add_rule(output_bytes=size)
    request_id = submit(api)
    url = api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"]

    with httpx.stream("GET", url) as response:
        assert int(response.headers["content-length"]) == size
        chunks = [len(c) for c in response.iter_raw()]
    assert sum(chunks) == size
    assert len(chunks) > 1
    body = httpx.get(url).content
    assert len(body) == size
    assert PAD_CHUNK_TYPE in body
    width, height, rows, _ = png.Reader(file=io.BytesIO(body)).asRGB8()
    assert (width, height) == (512, 288)
    assert sum(1 for _ in rows) == height


def test_the_journal_records_each_request_and_its_answer(emu, api):
    request_id = submit(api)
    api.get(f"/v1/requests/{request_id}/status", params={"verbose": "1"})
    api.get(f"/v1/requests/{request_id}/result")
    api.post(f"/v1/requests/{request_id}/cancel")
    api.get(f"/v1/models/{FLUX}")
    httpx.get(f"{emu.base_url}/files/{request_id}/0.png")
    httpx.get(f"{emu.base_url}/v1/requests/{request_id}/status")  # no token

    entries = emu.journal.entries
    assert [(e.endpoint, e.method, e.status_code) for e in entries] == [
        ("submit", "POST", 200),
        ("status", "GET", 200),
        ("result", "GET", 200),
        ("cancel", "POST", 202),
        ("model", "GET", 200),
        ("file", "GET", 200),
        ("status", "GET", 401),
    ]
    first = entries[0]
    assert first.path == f"/v1/models/{FLUX}"
    assert first.json == FLUX_INPUT
    assert first.model_id == FLUX
    assert first.headers["authorization"] == f"Bearer {emu.token}"
    assert all(name == name.lower() for name in first.headers)
    assert all(e.request_id == request_id for e in entries if e.endpoint != "model")
    assert entries[1].query == {"verbose": "1"}
    assert "authorization" not in entries[5].headers
    assert all(e.at <= time.time() for e in entries)
    assert emu.journal.count("status") == 2
    assert emu.journal.count(request_id=request_id) == 6
    assert emu.journal.last("status").status_code == 401


def test_admin_calls_are_not_journaled(emu, admin):
    assert admin.get("/health").json() == {"status": "ok"}
    admin.post("/faults", json={"endpoint": "status", "kind": "drop"})
    admin.get("/journal")
    admin.delete("/faults")

    assert len(emu.journal) == 0
    assert emu.faults == []
