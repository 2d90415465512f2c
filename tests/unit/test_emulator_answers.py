"""Answers that must not hurt, on demand: broken bodies, unwritten outcomes, bombs, redirects, odd headers.

Each fault is shown as it appears on the wire: raw httpx, with content
decoding off (``iter_raw``) where the point is what was sent, and any
inflating done here with a bound, so a test never swallows a bomb whole.
"""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest

from airflow_provider_runcomfy.emulator import RemoteEmulator, RunComfyEmulator, bombs

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"

FLUX_INPUT = {"prompt": "golden hour", "image_url": "https://example.com/street.png"}


def submit(api: httpx.Client) -> str:
    response = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def raw_get(url: str) -> tuple[httpx.Response, bytes]:
    """GET ``url`` and return the response and its body exactly as sent (no decoding)."""
    with httpx.Client(timeout=30) as client, client.stream("GET", url) as response:
        return response, b"".join(response.iter_raw())


def inflated_size(data: bytes, wbits: int, limit: int = 1 << 34) -> tuple[int, bytes]:
    """How many bytes ``data`` inflates to, counted 1 MiB at a time; and what is left after the stream."""
    inflater = zlib.decompressobj(wbits)
    total, pending = 0, data
    while pending and total <= limit:
        total += len(inflater.decompress(pending, 1 << 20))
        pending = inflater.unconsumed_tail
    while not inflater.eof and total <= limit:
        piece = inflater.decompress(b"", 1 << 20)
        if not piece:
            break
        total += len(piece)
    return total, inflater.unused_data


# -- bad_body ------------------------------------------------------------------------------------------


def test_a_submit_answered_with_truncated_json_still_created_the_job(emu, api):
    emu.add_fault("submit", "bad_body")

    response = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"request_id": "'
    assert len(emu.jobs) == 1  # handled for real: the job exists and is paid for
    entry = emu.journal.last("submit")
    assert (entry.fault, entry.status_code, entry.request_id) == ("bad_body", 200, emu.jobs[0].request_id)


def test_a_bad_body_can_be_any_status_type_and_text(emu, api):
    request_id = submit(api)
    page = "<html><body>Bad gateway</body></html>"
    emu.add_fault("status", "bad_body", status=502, content_type="text/html", body=page)

    response = api.get(f"/v1/requests/{request_id}/status")

    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == page
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "completed"


# -- not_written ---------------------------------------------------------------------------------------


def test_result_says_completed_without_an_outcome_for_the_next_reads_of_a_finished_job(emu, api):
    emu.add_rule(prompt_contains="slow", queue_seconds=60)
    queued = api.post(f"/v1/models/{FLUX}", json={**FLUX_INPUT, "prompt": "slow"}).json()["request_id"]
    finished = submit(api)
    emu.add_fault("result", "not_written", times=2)

    assert api.get(f"/v1/requests/{queued}/result").json()["status"] == "in_queue"  # unfinished: spared
    reads = [api.get(f"/v1/requests/{finished}/result").json() for _ in range(3)]

    assert reads[0] == reads[1] == {"request_id": finished, "status": "completed"}
    assert reads[2]["status"] == "succeeded"
    assert reads[2]["output"]["image"]
    assert [e.fault for e in emu.journal.of("result")] == [None, "not_written", "not_written", None]
    assert emu.faults[0].hits == 2


# -- bombs -------------------------------------------------------------------------------------------


def output_url(api: httpx.Client, request_id: str) -> str:
    return api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"]


def test_a_gzip_bomb_is_a_few_kilobytes_that_inflate_to_a_gibibyte(emu, api):
    url = output_url(api, submit(api))
    fault = emu.add_fault("file", "gzip_bomb")
    assert fault.size == 1 << 30

    response, body = raw_get(url)

    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip, gzip"
    assert int(response.headers["content-length"]) == len(body) < 16 * 1024
    inner_size, _ = inflated_size(body, 31)  # the outer gzip
    inner = zlib.decompress(body, 31)
    assert inner_size == len(inner) < 2 * 1024 * 1024
    assert inflated_size(inner, 31)[0] == 1 << 30


def test_a_zlib_bomb_is_served_as_deflate(emu, api):
    url = output_url(api, submit(api))
    emu.add_fault("file", "zlib_bomb", size=64 * 1024 * 1024)

    response, body = raw_get(url)

    assert response.headers["content-encoding"] == "deflate"
    assert len(body) < 128 * 1024
    assert inflated_size(body, 15)[0] == 64 * 1024 * 1024  # zlib framing, checksum verified


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, payload = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        offset += 12 + length
    return chunks


def test_a_png_bomb_declares_64x64_and_its_idat_inflates_to_the_size(emu):
    emu.add_fault("sample", "png_bomb")

    response, body = raw_get(emu.sample_url())

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert "content-encoding" not in response.headers
    chunks = png_chunks(body)
    assert (chunks[0][0], chunks[-1][0]) == (b"IHDR", b"IEND")
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height, depth, color) == (64, 64, 8, 2)
    idat = b"".join(p for k, p in chunks if k == b"IDAT")
    assert len(body) < 1024 * 1024
    assert inflated_size(idat, 15)[0] == 400_000_000


def test_a_bomb_is_built_once_and_served_in_pieces(emu, api):
    url = output_url(api, submit(api))
    emu.add_fault("file", "gzip_bomb", times=2, size=1 << 28)

    raw_get(url)
    raw_get(url)

    assert bombs.gzip_bomb.cache_info().currsize >= 1
    assert bombs.gzip_bomb(1 << 28) is bombs.gzip_bomb(1 << 28)
    with httpx.stream("GET", url) as normal:  # the fault is used up: the real file again
        assert normal.headers["content-type"] == "image/png"
        assert "content-encoding" not in normal.headers


# -- redirect, headers, long errors, samples ------------------------------------------------------------


def test_a_redirected_output_answers_302_with_the_location(emu, api):
    url = output_url(api, submit(api))
    emu.add_fault("file", "redirect", location="http://127.0.0.1:9/_emulator/reset")

    response = httpx.get(url, follow_redirects=False)

    assert response.status_code == 302
    assert response.headers["location"] == "http://127.0.0.1:9/_emulator/reset"


def test_an_http_fault_sends_extra_headers_such_as_an_unparseable_retry_after(emu, api):
    request_id = submit(api)
    emu.add_fault("status", "http", status=429, headers={"Retry-After": "nan", "X-Extra": "1"})

    response = api.get(f"/v1/requests/{request_id}/status")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "nan"
    assert response.headers["x-extra"] == "1"
    assert response.content == b""


def test_a_ten_megabyte_error_message_is_served_whole(emu, api):
    message = "x" * (10 * 1024 * 1024)
    emu.add_fault("result", "http", status=500, error_code=500001, error_message=message)

    response = api.get(f"/v1/requests/{submit(api)}/result")

    assert response.status_code == 500
    assert response.json() == {"error_code": 500001, "error_message": message}


def test_a_sample_can_fail_like_any_file(emu):
    emu.add_fault("sample", "http", status=404)

    assert httpx.get(emu.sample_url()).status_code == 404
    assert httpx.get(emu.sample_url()).status_code == 200
    assert [e.fault for e in emu.journal.of("sample")] == ["http", None]


def test_any_does_not_cover_samples(emu):
    emu.add_fault("any", "http", status=500)

    assert httpx.get(emu.sample_url()).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"endpoint": "status", "kind": "gzip_bomb"}, "'file' or 'sample'"),
        ({"endpoint": "status", "kind": "redirect", "location": "http://x"}, "'file' or 'sample'"),
        ({"endpoint": "file", "kind": "redirect"}, "location"),
        ({"endpoint": "status", "kind": "not_written"}, "'result'"),
        ({"endpoint": "file", "kind": "bad_body"}, "API endpoints"),
        ({"endpoint": "status", "kind": "http", "status": 429, "headers": {"X": "a\r\nb"}}, "line breaks"),
        ({"endpoint": "status", "kind": "http", "status": 500, "colour": "red"}, "colour"),
    ],
)
def test_an_impossible_new_fault_is_refused(emu, args, message):
    with pytest.raises(ValueError, match=message):
        emu.add_fault(**args)


# -- the same faults through the admin API ----------------------------------------------------------------


def test_remote_controls_plan_the_new_faults_too(emu, api):
    request_id = submit(api)
    with RemoteEmulator(emu.base_url) as remote:
        fault = remote.add_fault("status", "bad_body", request_id=request_id, body="oops")
        remote.add_fault("sample", "redirect", location="https://example.com/x.png")
        with pytest.raises(ValueError, match="'file' or 'sample'"):
            remote.add_fault("status", "png_bomb")

    assert (fault.kind, fault.status, fault.content_type, fault.body) == (
        "bad_body",
        200,
        "application/json",
        "oops",
    )
    assert api.get(f"/v1/requests/{request_id}/status").content == b"oops"
    assert httpx.get(emu.sample_url()).status_code == 302


def test_the_admin_api_takes_a_fault_as_json(emu, api, admin):
    url = output_url(api, submit(api))
    added = admin.post("/faults", json={"endpoint": "file", "kind": "zlib_bomb", "size": 1 << 20})
    refused = admin.post("/faults", json={"endpoint": "file", "kind": "zlib_bomb", "size": -1})

    assert added.status_code == 200
    assert added.json()["size"] == 1 << 20
    assert refused.status_code == 400
    assert "size" in refused.json()["detail"]
    assert raw_get(url)[0].headers["content-encoding"] == "deflate"


def test_an_in_process_fault_and_a_remote_one_are_the_same_model(emu):
    local = emu.add_fault("file", "png_bomb", size=1000)
    with RemoteEmulator(emu.base_url) as remote:
        remote_copy = remote.faults[0]

    assert remote_copy == local
    assert isinstance(emu, RunComfyEmulator)
