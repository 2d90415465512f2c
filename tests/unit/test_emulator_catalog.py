"""The emulator's model catalog: schemas that match RunComfy's pages, prices, costs and the balance.

The seed models' schemas are checked against the tables of runcomfy-api.md
and against the emulator's own validation (one definition serves both);
the other models and every price are emulator fixtures (docs/emulator.md).
"""

from __future__ import annotations

import base64

import httpx
import jsonschema
import pytest

from airflow_provider_runcomfy.emulator.models import CATALOG

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"
VIDEO = "wan-ai/wan-2-2/image-to-video"
UPSCALE = "runcomfy/image-upscale"
IMAGE = "https://example.com/a.png"


def info(api: httpx.Client, model_id: str) -> dict:
    response = api.get(f"/v1/models/{model_id}")
    assert response.status_code == 200, response.text
    return response.json()


def cost_of(api: httpx.Client, model_id: str, payload: dict) -> float:
    response = api.post(f"/v1/models/{model_id}", json=payload)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    result = api.get(f"/v1/requests/{request_id}/result", params={"include_cost": "true"}).json()
    assert result["model_id"] == model_id
    return result["cost"]


@pytest.mark.parametrize("model_id", sorted(CATALOG))
def test_a_catalog_model_answers_name_schema_and_price(api, model_id):
    answer = info(api, model_id)

    assert set(answer) == {"model_id", "name", "input_schema", "base_price_usd", "price_unit", "pricing_note"}
    assert answer["model_id"] == model_id
    assert answer["price_unit"] in ("image", "second", "request")
    assert answer["base_price_usd"] > 0
    jsonschema.Draft202012Validator.check_schema(answer["input_schema"])


def test_the_catalog_has_a_video_model_priced_per_second(api):
    video = info(api, VIDEO)

    assert video["price_unit"] == "second"
    assert set(video["input_schema"]["required"]) == {"prompt", "image_url"}


def test_a_model_outside_the_catalog_has_a_name_but_no_schema_or_price(api):
    assert info(api, "vendor/some-model") == {"model_id": "vendor/some-model", "name": "vendor/some-model"}
    response = api.post("/v1/models/vendor/some-model", json={"anything": [1, {"goes": True}]})
    assert response.status_code == 200


def test_flux_schema_matches_runcomfy_api_table(api):
    schema = info(api, FLUX)["input_schema"]
    props = schema["properties"]

    assert sorted(schema["required"]) == ["image_url", "prompt"]
    assert set(props) == {"prompt", "image_url", "seed", "aspect_ratio"}
    assert props["prompt"]["type"] == "string"
    assert props["image_url"]["type"] == "string"
    assert props["aspect_ratio"]["enum"] == [
        "21:9",
        "16:9",
        "4:3",
        "3:2",
        "1:1",
        "2:3",
        "3:4",
        "9:16",
        "9:21",
    ]
    assert props["aspect_ratio"]["default"] == "16:9"
    assert schema["additionalProperties"] is False


def test_nano_banana_schema_matches_runcomfy_api_table(api):
    schema = info(api, NANO)["input_schema"]
    props = schema["properties"]

    assert sorted(schema["required"]) == ["image_urls", "prompt"]
    assert props["prompt"]["maxLength"] == 1000
    assert (
        props["image_urls"]["type"],
        props["image_urls"]["minItems"],
        props["image_urls"]["maxItems"],
    ) == (
        "array",
        1,
        10,
    )
    assert props["image_urls"]["items"]["type"] == "string"
    assert props["aspect_ratio"]["enum"] == [
        "auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16",
    ]  # fmt: skip
    assert props["aspect_ratio"]["default"] == "auto"
    assert (props["output_format"]["enum"], props["output_format"]["default"]) == (
        ["jpeg", "png", "webp"],
        "png",
    )
    assert (
        props["num_images"]["minimum"],
        props["num_images"]["maximum"],
        props["num_images"]["default"],
    ) == (
        1,
        4,
        1,
    )


CASES = [
    (FLUX, {"prompt": "p", "image_url": IMAGE}),
    (FLUX, {"prompt": "p", "image_url": IMAGE, "seed": 3, "aspect_ratio": "9:21"}),
    (FLUX, {"prompt": "p"}),
    (FLUX, {"prompt": "p", "image_url": IMAGE, "aspect_ratio": "5:4"}),
    (FLUX, {"prompt": "p", "image_url": IMAGE, "seed": "3"}),
    (FLUX, {"prompt": "p", "image_url": IMAGE, "steps": 20}),
    (NANO, {"prompt": "p", "image_urls": [IMAGE] * 10, "num_images": 4, "output_format": "webp"}),
    (NANO, {"prompt": "p", "image_urls": []}),
    (NANO, {"prompt": "p", "image_urls": [IMAGE] * 11}),
    (NANO, {"prompt": "x" * 1001, "image_urls": [IMAGE]}),
    (NANO, {"prompt": "p", "image_urls": [IMAGE], "num_images": 5}),
    (NANO, {"prompt": "p", "image_urls": [IMAGE], "aspect_ratio": "9:21"}),
    (VIDEO, {"prompt": "p", "image_url": IMAGE, "duration": 10}),
    (VIDEO, {"prompt": "p", "image_url": IMAGE, "duration": 7}),
    (UPSCALE, {"image_url": IMAGE, "scale": 4}),
    (UPSCALE, {"image_url": IMAGE, "scale": 3}),
]


@pytest.mark.parametrize(("model_id", "payload"), CASES)
def test_the_published_schema_and_the_emulators_validation_agree(api, model_id, payload):
    schema = info(api, model_id)["input_schema"]
    schema_says_valid = jsonschema.Draft202012Validator(schema).is_valid(payload)

    response = api.post(f"/v1/models/{model_id}", json=payload)

    assert response.status_code == (200 if schema_says_valid else 422), response.text


def test_include_cost_is_price_times_units(api):
    assert cost_of(api, FLUX, {"prompt": "p", "image_url": IMAGE}) == pytest.approx(0.04)
    assert cost_of(api, NANO, {"prompt": "p", "image_urls": [IMAGE], "num_images": 3}) == pytest.approx(0.117)
    assert cost_of(api, VIDEO, {"prompt": "p", "image_url": IMAGE, "duration": 10}) == pytest.approx(0.5)
    assert cost_of(api, UPSCALE, {"image_url": IMAGE}) == pytest.approx(0.01)
    assert cost_of(api, "vendor/unlisted", {"x": 1}) == pytest.approx(0.04)  # unlisted_price_usd


def test_a_submit_that_costs_more_than_the_balance_is_refused_with_400002(emu, api):
    emu.set_config(balance_usd=0.10)
    four_images = {"prompt": "p", "image_urls": [IMAGE], "num_images": 4}  # 4 x $0.039

    refused = api.post(f"/v1/models/{NANO}", json=four_images)
    accepted = api.post(f"/v1/models/{NANO}", json={**four_images, "num_images": 2})

    assert refused.status_code == 400
    assert refused.json()["error_code"] == 400002
    assert "$0.10 left" in refused.json()["error_message"]
    assert accepted.status_code == 200
    assert emu.get_config()["balance_usd"] == pytest.approx(0.022)
    assert len(emu.jobs) == 1


def test_the_402_form_of_no_balance_comes_from_an_http_fault(emu, api):
    emu.add_fault("submit", "http", status=402, error_code=400002, error_message="Insufficient balance")

    response = api.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": IMAGE})

    assert response.status_code == 402
    assert response.json()["error_code"] == 400002
    assert emu.jobs == []


def test_a_data_uri_input_over_the_size_bound_fails_the_job(emu, api):
    emu.set_config(max_input_bytes=1000)
    big = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(3000)).decode()

    request_id = api.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": big}).json()["request_id"]
    result = api.get(f"/v1/requests/{request_id}/result").json()

    assert result["status"] == "failed"
    assert result["error"]["message"].endswith("larger than 1000 bytes")
    assert result["error"]["message"].startswith("could not fetch image_url data:image/png;base64,")
