"""The emulator answers every error RunComfy documents, with its HTTP status and error code.

Real HTTP on 127.0.0.1 against the session emulator (jobs finish at once),
or an emulator with a fake clock (``clocked``) where expiry is timed.
"""

from __future__ import annotations

import httpx
import pytest

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"
FLUX_INPUT = {"prompt": "make the sky purple", "image_url": "https://example.com/street.png"}
NANO_INPUT = {"prompt": "a poster", "image_urls": ["https://example.com/a.png"]}


def submit(api: httpx.Client, model_id: str = FLUX, payload: dict | None = None) -> str:
    response = api.post(f"/v1/models/{model_id}", json=FLUX_INPUT if payload is None else payload)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def assert_error(response: httpx.Response, http_status: int, error_code: int) -> dict:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["error_code"] == error_code
    assert isinstance(body["error_message"], str)
    assert body["error_message"]
    return body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic emulator-token", "Bearer"])
def test_a_missing_or_wrong_token_is_400004(emu, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=emu.base_url, headers=headers) as client:
        assert_error(client.post(f"/v1/models/{FLUX}", json=FLUX_INPUT), 401, 400004)
        assert_error(client.get("/v1/requests/abc/status"), 401, 400004)
        assert_error(client.get(f"/v1/models/{FLUX}"), 401, 400004)
    assert emu.jobs == []


def test_a_rotated_token_stops_working_at_once(emu, api):
    emu.set_config(token="new-token")

    assert_error(api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT), 401, 400004)
    response = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT, headers={"Authorization": "Bearer new-token"})
    assert response.status_code == 200


def test_another_users_request_is_403001(emu, api):
    emu.set_config(extra_tokens=["other-user"])
    request_id = submit(api)
    other = {"Authorization": "Bearer other-user"}

    for method, path in [("GET", "status"), ("GET", "result"), ("POST", "cancel")]:
        assert_error(api.request(method, f"/v1/requests/{request_id}/{path}", headers=other), 403, 403001)
    assert api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT, headers=other).status_code == 200


@pytest.mark.parametrize("request_id", ["0123456789abcdef0123456789abcdef", "not%20valid", "x" * 129])
def test_an_unknown_request_is_404001(api, request_id):
    for method, path in [("GET", "status"), ("GET", "result"), ("POST", "cancel")]:
        assert_error(api.request(method, f"/v1/requests/{request_id}/{path}"), 404, 404001)


@pytest.mark.parametrize("model_id", ["example/unknown-model", "bad model/x", "a/b@c", "a//b"])
def test_an_invalid_or_unknown_model_is_400001(emu, api, model_id):
    assert_error(api.post(f"/v1/models/{model_id}", json={"prompt": "x"}), 400, 400001)
    assert_error(api.get(f"/v1/models/{model_id}"), 400, 400001)
    assert emu.jobs == []


def test_unknown_models_can_be_configured(emu, api):
    emu.set_config(unknown_models=["vendor/retired"])

    assert_error(api.post("/v1/models/vendor/retired", json={}), 400, 400001)
    assert api.post("/v1/models/example/unknown-model", json={}).status_code == 200


@pytest.mark.parametrize(
    ("model_id", "payload", "fields"),
    [
        (FLUX, {"image_url": "https://x/y.png"}, {"prompt"}),
        (FLUX, {"prompt": "p", "image_url": "https://x/y.png", "aspect_ratio": "5:4"}, {"aspect_ratio"}),
        (FLUX, {"prompt": "p", "image_url": "https://x/y.png", "seed": "7"}, {"seed"}),
        (FLUX, {"prompt": "p", "image_url": "https://x/y.png", "steps": 4}, {"steps"}),
        (NANO, {"prompt": "p" * 1001, "image_urls": ["https://x/y.png"]}, {"prompt"}),
        (NANO, {"prompt": "p", "image_urls": []}, {"image_urls"}),
        (NANO, {"prompt": "p", "image_urls": ["https://x/y.png"] * 11}, {"image_urls"}),
        (NANO, {"prompt": "p", "image_urls": ["https://x/y.png"], "num_images": 5}, {"num_images"}),
        (NANO, {"prompt": "p", "image_urls": ["https://x/y.png"], "output_format": "gif"}, {"output_format"}),
        (NANO, {"prompt": "p", "image_urls": ["https://x/y.png"], "aspect_ratio": "9:21"}, {"aspect_ratio"}),
    ],
)
def test_input_against_the_seed_schema_is_422001_naming_the_fields(emu, api, model_id, payload, fields):
    body = assert_error(api.post(f"/v1/models/{model_id}", json=payload), 422, 422001)

    assert {entry["loc"][1] for entry in body["detail"]} == fields
    assert all(entry["loc"][0] == "body" and entry["msg"] for entry in body["detail"])
    assert emu.jobs == []


def test_a_body_that_is_not_a_json_object_is_422001(api):
    assert_error(api.post(f"/v1/models/{FLUX}", content=b"{not json"), 422, 422001)
    assert_error(api.post("/v1/models/vendor/any", json=[1, 2]), 422, 422001)


def test_valid_seed_inputs_with_every_option_are_accepted(api):
    submit(api, FLUX, {**FLUX_INPUT, "seed": 42, "aspect_ratio": "9:21"})
    full = {**NANO_INPUT, "aspect_ratio": "auto", "output_format": "webp", "num_images": 4}
    submit(api, NANO, {**full, "image_urls": ["https://x/1.png"] * 10})


def test_an_empty_balance_is_400002_and_a_cancel_refunds(emu, api):
    emu.set_config(balance_usd=0.10, price_usd=0.04, queue_seconds=30)
    first, _ = submit(api), submit(api)

    body = assert_error(api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT), 400, 400002)  # as RunComfy documents
    assert "balance" in body["error_message"]
    assert len(emu.jobs) == 2
    assert emu.get_config()["balance_usd"] == pytest.approx(0.02)

    api.post(f"/v1/requests/{first}/cancel")
    assert emu.get_config()["balance_usd"] == pytest.approx(0.06)
    submit(api)


def test_a_request_expires_after_the_ttl(clocked):
    emu, clock, api = clocked
    emu.set_config(request_ttl_seconds=60)
    request_id = submit(api)
    clock.now += 30 + 59

    assert api.get(f"/v1/requests/{request_id}/result").json()["status"] == "succeeded"
    output_url = api.get(f"/v1/requests/{request_id}/result").json()["output"]["image"]
    assert httpx.get(output_url).status_code == 200

    clock.now += 1
    assert_error(api.get(f"/v1/requests/{request_id}/result"), 404, 404001)
    assert_error(api.get(f"/v1/requests/{request_id}/status"), 404, 404001)
    assert httpx.get(output_url).status_code == 404
    assert emu.job(request_id).expired


def test_expire_makes_a_request_404001_at_once(emu, api):
    request_id = submit(api)

    assert emu.expire(request_id) is True
    assert emu.expire("never-submitted") is False
    assert_error(api.get(f"/v1/requests/{request_id}/status"), 404, 404001)
    assert_error(api.post(f"/v1/requests/{request_id}/cancel"), 404, 404001)
