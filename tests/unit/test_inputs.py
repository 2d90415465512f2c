"""The typed inputs of the seed models: what a DAG author may write, and what they are told when wrong.

Pure unit tests: no HTTP, no Airflow. The allowed values are written out here
from the API schemas (not read back from the code), so a wrong enum in the code
makes a test fail.
"""

from __future__ import annotations

import datetime
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.models import (
    FLUX_KONTEXT_PRO_EDIT,
    INPUT_MODELS,
    MAX_DATA_URI_LENGTH,
    NANO_BANANA_EDIT,
    FluxKontextProEditInput,
    ModelInput,
    NanoBananaEditInput,
    image_url_problem,
    validate_input,
)

# From the API schemas of the two seed models (docs/seeds), in schema order.
FLUX_ASPECT_RATIOS = ["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
NANO_ASPECT_RATIOS = ["auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"]
NANO_OUTPUT_FORMATS = ["jpeg", "png", "webp"]

IMAGE = "https://playgrounds-storage-public.runcomfy.net/tools/7007/media-files/usecase2-2-input.png"
PNG_DATA_URI = (  # a 1x1 PNG
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAcCBlCwAAAABJRU5ErkJggg=="
)


def flux(**fields: object) -> FluxKontextProEditInput:
    return FluxKontextProEditInput(**{"prompt": "make it blue", "image_url": IMAGE, **fields})


def nano(**fields: object) -> NanoBananaEditInput:
    return NanoBananaEditInput(**{"prompt": "make it blue", "image_urls": [IMAGE], **fields})


def error_of(build, **fields: object) -> str:
    """The message a user sees when ``build(**fields)`` is refused."""
    with pytest.raises(InvalidInputError) as caught:
        build(**fields)
    return caught.value.message


# --- the model ids and the registry -------------------------------------------------------------


def test_the_seed_model_ids_are_the_ones_on_the_api_pages() -> None:
    assert FLUX_KONTEXT_PRO_EDIT == "blackforestlabs/flux-1-kontext/pro/edit"
    assert NANO_BANANA_EDIT == "google/nano-banana/edit"
    assert dict(INPUT_MODELS) == {
        "blackforestlabs/flux-1-kontext/pro/edit": FluxKontextProEditInput,
        "google/nano-banana/edit": NanoBananaEditInput,
    }
    assert FluxKontextProEditInput.model_id == FLUX_KONTEXT_PRO_EDIT
    assert NanoBananaEditInput.model_id == NANO_BANANA_EDIT


def test_field_names_mirror_the_api_schemas() -> None:
    assert list(FluxKontextProEditInput.model_fields) == ["prompt", "image_url", "seed", "aspect_ratio"]
    assert list(NanoBananaEditInput.model_fields) == [
        "prompt",
        "image_urls",
        "aspect_ratio",
        "output_format",
        "num_images",
    ]
    required = {
        cls: {name for name, info in cls.model_fields.items() if info.is_required()}
        for cls in (FluxKontextProEditInput, NanoBananaEditInput)
    }
    assert required == {
        FluxKontextProEditInput: {"prompt", "image_url"},
        NanoBananaEditInput: {"prompt", "image_urls"},
    }


# --- flux-1-kontext/pro/edit --------------------------------------------------------------------


def test_flux_minimal_inputs_send_only_prompt_and_image() -> None:
    assert flux().to_payload() == {"prompt": "make it blue", "image_url": IMAGE}


def test_flux_empty_prompt_is_allowed_as_the_schema_allows_it_but_a_missing_one_is_not() -> None:
    assert flux(prompt="").to_payload()["prompt"] == ""
    message = error_of(FluxKontextProEditInput, image_url=IMAGE)
    assert message == "Invalid input for blackforestlabs/flux-1-kontext/pro/edit: prompt: is required"


@pytest.mark.parametrize("aspect_ratio", FLUX_ASPECT_RATIOS)
def test_flux_accepts_every_aspect_ratio_of_the_schema(aspect_ratio: str) -> None:
    assert flux(aspect_ratio=aspect_ratio).to_payload()["aspect_ratio"] == aspect_ratio


@pytest.mark.parametrize("aspect_ratio", ["auto", "5:4", "4:5", "16:10", "16/9", " 16:9", "", 1.0])
def test_flux_refuses_other_aspect_ratios_and_lists_the_allowed_ones(aspect_ratio: object) -> None:
    message = error_of(flux, aspect_ratio=aspect_ratio)
    assert message.startswith("Invalid input for blackforestlabs/flux-1-kontext/pro/edit: aspect_ratio: ")
    assert f"{aspect_ratio!r} is not one of {', '.join(FLUX_ASPECT_RATIOS)}" in message


@pytest.mark.parametrize("seed", [0, 1, -1, 2**31, 2**63, 2**100])
def test_flux_accepts_any_integer_seed(seed: int) -> None:
    assert flux(seed=seed).to_payload()["seed"] == seed


@pytest.mark.parametrize("seed", [True, False, 1.5, 1.0, "1", [1]])
def test_flux_refuses_a_seed_that_is_not_a_true_integer(seed: object) -> None:
    message = error_of(flux, seed=seed)
    assert f"seed: must be an integer (got {seed!r})" in message


@given(seed=st.integers())
@settings(max_examples=50)
def test_any_integer_seed_is_sent_unchanged(seed: int) -> None:
    assert flux(seed=seed).to_payload()["seed"] == seed


@given(seed=st.floats() | st.booleans())
@settings(max_examples=50)
def test_no_float_or_bool_seed_is_accepted(seed: float | bool) -> None:
    with pytest.raises(InvalidInputError, match="seed: must be an integer"):
        flux(seed=seed)


# --- nano-banana/edit ---------------------------------------------------------------------------


def test_nano_minimal_inputs_send_only_prompt_and_images() -> None:
    assert nano().to_payload() == {"prompt": "make it blue", "image_urls": [IMAGE]}


def test_nano_prompt_may_be_1000_characters_but_not_1001() -> None:
    assert nano(prompt="x" * 1000).prompt == "x" * 1000
    message = error_of(nano, prompt="x" * 1001)
    assert message == (
        "Invalid input for google/nano-banana/edit: prompt: must be at most 1000 characters (got 1001)"
    )


@given(prompt=st.text(max_size=1000))
@settings(max_examples=50)
def test_any_prompt_up_to_1000_characters_is_accepted_and_sent_unchanged(prompt: str) -> None:
    assert nano(prompt=prompt).to_payload()["prompt"] == prompt


@given(prompt=st.text(min_size=1001, max_size=1200))
@settings(max_examples=30)
def test_any_prompt_over_1000_characters_is_refused(prompt: str) -> None:
    with pytest.raises(InvalidInputError, match=r"prompt: must be at most 1000 characters"):
        nano(prompt=prompt)


@pytest.mark.parametrize("count", [1, 2, 10])
def test_nano_takes_1_to_10_images(count: int) -> None:
    urls = [f"https://example.com/{i}.png" for i in range(count)]
    assert nano(image_urls=urls).to_payload()["image_urls"] == urls


@pytest.mark.parametrize("count", [0, 11])
def test_nano_refuses_no_image_or_more_than_10(count: int) -> None:
    message = error_of(nano, image_urls=[IMAGE] * count)
    assert message.endswith(f"image_urls: must have 1 to 10 items (got {count})")


def test_nano_refuses_a_single_url_string_where_a_list_is_expected() -> None:
    message = error_of(nano, image_urls=IMAGE)
    assert "image_urls: must be a list" in message


@pytest.mark.parametrize("aspect_ratio", NANO_ASPECT_RATIOS)
def test_nano_accepts_every_aspect_ratio_of_the_schema(aspect_ratio: str) -> None:
    assert nano(aspect_ratio=aspect_ratio).to_payload()["aspect_ratio"] == aspect_ratio


@pytest.mark.parametrize("aspect_ratio", ["square", "9:21", "16:10", "AUTO", "Auto", ""])
def test_nano_refuses_other_aspect_ratios_and_lists_the_allowed_ones(aspect_ratio: str) -> None:
    message = error_of(nano, aspect_ratio=aspect_ratio)
    assert f"aspect_ratio: {aspect_ratio!r} is not one of {', '.join(NANO_ASPECT_RATIOS)}" in message


@pytest.mark.parametrize("output_format", NANO_OUTPUT_FORMATS)
def test_nano_accepts_every_output_format_of_the_schema(output_format: str) -> None:
    assert nano(output_format=output_format).to_payload()["output_format"] == output_format


@pytest.mark.parametrize("output_format", ["jpg", "gif", "PNG", "image/png", ""])
def test_nano_refuses_other_output_formats_and_lists_the_allowed_ones(output_format: str) -> None:
    message = error_of(nano, output_format=output_format)
    assert f"output_format: {output_format!r} is not one of jpeg, png, webp" in message


@pytest.mark.parametrize("num_images", [1, 2, 3, 4])
def test_nano_generates_1_to_4_images(num_images: int) -> None:
    assert nano(num_images=num_images).to_payload()["num_images"] == num_images


@pytest.mark.parametrize("num_images", [0, 5, -1, 100])
def test_nano_refuses_a_number_of_images_outside_1_to_4(num_images: int) -> None:
    message = error_of(nano, num_images=num_images)
    assert message.endswith(f"num_images: must be between 1 and 4 (got {num_images})")


@pytest.mark.parametrize("num_images", [True, 2.0, "2"])
def test_nano_refuses_a_number_of_images_that_is_not_a_true_integer(num_images: object) -> None:
    assert "num_images: must be an integer" in error_of(nano, num_images=num_images)


# --- image URLs ---------------------------------------------------------------------------------

ACCEPTED_URLS = [
    IMAGE,
    "https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc&X-Amz-Expires=600",
    "HTTPS://Example.COM/a%20b.png",
    "https://example.com:8443/a.png",
    "https://[2001:db8::1]/a.png",
    "http://127.0.0.1:8080/files/a.png",
    "http://127.5.6.7/a.png",
    "http://localhost/a.png",
    "http://localhost:9000/a.png",
    "http://[::1]:9000/a.png",
    PNG_DATA_URI,
    "data:image/jpeg;base64,/9j/4AAQSkZJRg==",
    "data:image/webp;name=a.webp;base64,UklGRg==",
]

REFUSED_URLS = [
    "http://example.com/a.png",
    "http://10.0.0.1/a.png",
    "http://192.168.1.5/a.png",
    "http://[2001:db8::1]/a.png",
    "ftp://example.com/a.png",
    # file:///tmp/a.png, s3://bucket/a.png and /tmp/a.png are storage paths, signed or inlined
    # when the task runs: tests/unit/test_sources_references.py
    "javascript:alert(1)",
    "a.png",
    "example.com/a.png",
    "//example.com/a.png",
    "https:example.com/a.png",
    "https:///a.png",
    "https://",
    " https://example.com/a.png",
    "https://example.com/a.png\n",
    "https://example.com/a b.png",
    "https://example.com/\ta.png",
    "https://[::1/a.png",
    "https://example.com:99999/a.png",
    "",
    "data:text/plain;base64,aGVsbG8=",
    "data:image/png,rawbytes",
    "data:image/png;base64,",
    "data:image/png;base64,not base64!",
    "data:;base64,iVBORw0KGgo=",
]


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_accepted_image_urls_are_sent_exactly_as_written(url: str) -> None:
    assert image_url_problem(url) is None
    assert flux(image_url=url).to_payload()["image_url"] == url
    assert nano(image_urls=[url, IMAGE]).to_payload()["image_urls"] == [url, IMAGE]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused_image_urls_name_the_field_and_say_what_is_accepted(url: str) -> None:
    assert image_url_problem(url) is not None
    message = error_of(flux, image_url=url)
    assert message.startswith("Invalid input for blackforestlabs/flux-1-kontext/pro/edit: image_url: ")
    assert "https://" in message or "data:image/<type>;base64,<data>" in message or "base64" in message

    message = error_of(nano, image_urls=[IMAGE, url])
    assert message.startswith("Invalid input for google/nano-banana/edit: image_urls[1]: ")


def test_a_public_http_url_is_refused_with_the_reason() -> None:
    message = error_of(flux, image_url="http://example.com/a.png")
    assert "http:// is accepted only on a loopback host" in message
    assert "'example.com' is not one" in message


def test_a_refused_url_is_quoted_without_its_query_string() -> None:
    # A pre-signed URL's query carries a signature: it must not end up in task logs.
    message = error_of(flux, image_url="http://example.com/a.png?X-Amz-Signature=SECRET")
    assert "'http://example.com/a.png?...'" in message
    assert "SECRET" not in message


def test_a_non_string_url_is_refused() -> None:
    assert "image_url: must be a string (got 42)" in error_of(flux, image_url=42)
    assert "image_url: must be a string (got b'https://example.com/a.png')" in error_of(
        flux, image_url=b"https://example.com/a.png"
    )


def test_a_data_uri_up_to_the_limit_is_accepted() -> None:
    header = "data:image/png;base64,"
    url = header + "A" * (MAX_DATA_URI_LENGTH - len(header))
    assert len(url) == MAX_DATA_URI_LENGTH
    assert flux(image_url=url).to_payload()["image_url"] is url


def test_an_oversize_data_uri_is_refused_with_the_advice_to_host_the_file() -> None:
    header = "data:image/png;base64,"
    url = header + "A" * (MAX_DATA_URI_LENGTH - len(header) + 1)
    message = error_of(nano, image_urls=[url])
    assert message.startswith("Invalid input for google/nano-banana/edit: image_urls[0]: ")
    assert "too large" in message
    assert "Host the file" in message
    assert len(message) < 1000  # the megabytes of data are not echoed


_HOST = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?){0,3}\.[a-z]{2,6}",
    fullmatch=True,
)
_PATH = st.text(alphabet=string.ascii_letters + string.digits + "-._~%/", max_size=40)
_HTTPS_URL = st.builds(lambda host, path: f"https://{host}/{path}", _HOST, _PATH)


@given(urls=st.lists(_HTTPS_URL, min_size=1, max_size=10))
@settings(max_examples=50)
def test_any_list_of_1_to_10_https_urls_is_accepted_unchanged(urls: list[str]) -> None:
    assert nano(image_urls=urls).to_payload()["image_urls"] == urls


@given(urls=st.lists(_HTTPS_URL, min_size=11, max_size=20))
@settings(max_examples=20)
def test_any_list_of_more_than_10_urls_is_refused(urls: list[str]) -> None:
    with pytest.raises(InvalidInputError, match=r"image_urls: must have 1 to 10 items"):
        nano(image_urls=urls)


@given(host=_HOST.filter(lambda h: not h.endswith("localhost")), path=_PATH)
@settings(max_examples=50)
def test_http_on_any_public_host_is_refused(host: str, path: str) -> None:
    with pytest.raises(InvalidInputError, match=r"image_url: .*http:// is accepted only on a loopback host"):
        flux(image_url=f"http://{host}/{path}")


# --- what every input model does ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "typo", "suggestion"),
    [
        (flux, "aspect_raito", "aspect_ratio"),
        (flux, "image_urls", "image_url"),
        (nano, "image_url", "image_urls"),
        (nano, "num_image", "num_images"),
    ],
)
def test_a_misspelt_input_is_refused_not_silently_dropped(build, typo: str, suggestion: str) -> None:
    message = error_of(build, **{typo: "16:9"})
    assert f"{typo}: is not an input of this model (did you mean {suggestion}?)" in message
    fields = list(type(build()).model_fields)
    assert f"its inputs are {', '.join(fields)}" in message


def test_an_unknown_input_without_a_close_match_lists_the_inputs() -> None:
    message = error_of(nano, negative_prompt="blurry")
    assert message.endswith(
        "negative_prompt: is not an input of this model; "
        "its inputs are prompt, image_urls, aspect_ratio, output_format, num_images"
    )


def test_unset_and_none_optionals_are_not_sent_so_runcomfy_defaults_apply() -> None:
    explicit_none = nano(aspect_ratio=None, output_format=None, num_images=None)
    assert explicit_none.to_payload() == {"prompt": "make it blue", "image_urls": [IMAGE]}
    assert flux(seed=None, aspect_ratio=None).to_payload() == {"prompt": "make it blue", "image_url": IMAGE}


def test_set_optionals_are_sent() -> None:
    payload = nano(aspect_ratio="4:5", output_format="webp", num_images=3).to_payload()
    assert payload == {
        "prompt": "make it blue",
        "image_urls": [IMAGE],
        "aspect_ratio": "4:5",
        "output_format": "webp",
        "num_images": 3,
    }
    assert json.loads(json.dumps(payload)) == payload
    assert flux(seed=0, aspect_ratio="9:21").to_payload() == {
        "prompt": "make it blue",
        "image_url": IMAGE,
        "seed": 0,
        "aspect_ratio": "9:21",
    }


def test_inputs_are_frozen_once_checked() -> None:
    inputs = flux()
    with pytest.raises(ValidationError):
        inputs.prompt = "something else"  # type: ignore[misc]


def test_all_problems_are_reported_at_once_without_pydantic_noise() -> None:
    with pytest.raises(InvalidInputError) as caught:
        NanoBananaEditInput(prompt=1, image_urls=[], aspect_ratio="square", num_images=9, colour="red")
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, RunComfyError)
    assert isinstance(error.__cause__, ValidationError)  # kept for debugging
    assert str(error) == (
        "Invalid input for google/nano-banana/edit: prompt: must be a string (got 1); "
        "image_urls: must have 1 to 10 items (got 0); "
        f"aspect_ratio: 'square' is not one of {', '.join(NANO_ASPECT_RATIOS)}; "
        "num_images: must be between 1 and 4 (got 9); "
        "colour: is not an input of this model; "
        "its inputs are prompt, image_urls, aspect_ratio, output_format, num_images"
    )
    assert "pydantic" not in str(error)


def test_a_long_bad_value_is_not_echoed_in_full() -> None:
    message = error_of(nano, aspect_ratio="x" * 500)
    assert "x" * 100 not in message


_NANO_INPUTS = st.builds(
    NanoBananaEditInput,
    prompt=st.text(max_size=1000),
    image_urls=st.lists(_HTTPS_URL | st.just(PNG_DATA_URI), min_size=1, max_size=10),
    aspect_ratio=st.none() | st.sampled_from(NANO_ASPECT_RATIOS),
    output_format=st.none() | st.sampled_from(NANO_OUTPUT_FORMATS),
    num_images=st.none() | st.integers(1, 4),
)


@given(inputs=_NANO_INPUTS)
@settings(max_examples=50)
def test_a_payload_rebuilds_the_same_inputs(inputs: NanoBananaEditInput) -> None:
    payload = inputs.to_payload()
    assert NanoBananaEditInput(**payload) == inputs
    assert validate_input(NANO_BANANA_EDIT, payload) == payload
    assert validate_input(NANO_BANANA_EDIT, inputs) == payload
    assert None not in payload.values()


# --- validate_input -----------------------------------------------------------------------------


def test_validate_input_checks_a_dict_for_each_seed_model() -> None:
    assert validate_input(FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": IMAGE, "seed": None}) == {
        "prompt": "p",
        "image_url": IMAGE,
    }
    assert validate_input(NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [IMAGE], "num_images": 2}) == {
        "prompt": "p",
        "image_urls": [IMAGE],
        "num_images": 2,
    }


def test_validate_input_reports_the_model_each_bad_field_and_the_allowed_values() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_input(
            NANO_BANANA_EDIT,
            {"prompt": "p", "image_urls": [IMAGE], "aspect_ratio": "square", "num_images": 5},
        )
    assert caught.value.message == (
        "Invalid input for google/nano-banana/edit: aspect_ratio: 'square' is not one of "
        "auto, 21:9, 16:9, 3:2, 4:3, 5:4, 1:1, 4:5, 3:4, 2:3, 9:16; "
        "num_images: must be between 1 and 4 (got 5)"
    )
    assert isinstance(caught.value.__cause__, ValidationError)


def test_validate_input_takes_an_instance_of_the_model_class() -> None:
    assert validate_input(FLUX_KONTEXT_PRO_EDIT, flux(seed=7)) == flux(seed=7).to_payload()
    assert validate_input(NANO_BANANA_EDIT, nano(num_images=2)) == nano(num_images=2).to_payload()


def test_validate_input_refuses_the_inputs_of_another_model() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_input(NANO_BANANA_EDIT, flux())
    assert caught.value.message == (
        "Invalid input for google/nano-banana/edit: got a FluxKontextProEditInput, the input of "
        "blackforestlabs/flux-1-kontext/pro/edit; pass a NanoBananaEditInput or a dict of this model's inputs"
    )
    with pytest.raises(InvalidInputError, match=r"Invalid input for acme/video: got a NanoBananaEditInput"):
        validate_input("acme/video", nano())


def test_validate_input_checks_again_an_instance_mutated_after_construction() -> None:
    inputs = nano()
    inputs.image_urls.append("ftp://example.com/a.png")  # frozen does not freeze the list
    with pytest.raises(InvalidInputError, match=r"image_urls\[1\]: 'ftp://example.com/a.png'"):
        validate_input(NANO_BANANA_EDIT, inputs)


def test_validate_input_passes_any_other_models_json_object_through_as_a_copy() -> None:
    inputs = {"prompt": "a cat", "duration": 5, "loop": True, "tags": ("a", "b"), "extra": {"k": [1.5, None]}}
    payload = validate_input("kling/kling-2-1/standard/image-to-video", inputs)
    assert payload == {
        "prompt": "a cat",
        "duration": 5,
        "loop": True,
        "tags": ["a", "b"],
        "extra": {"k": [1.5, None]},
    }
    assert type(payload) is dict
    payload["extra"]["k"].append(2)
    assert inputs["extra"] == {"k": [1.5, None]}  # the caller's objects are not shared
    assert validate_input("acme/anything", {}) == {}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(inputs=st.dictionaries(st.text(max_size=10), _JSON, max_size=5))
@settings(max_examples=50)
def test_any_json_object_passes_through_unchanged_for_other_models(inputs: dict[str, object]) -> None:
    assert validate_input("acme/any-model", inputs) == inputs


@pytest.mark.parametrize(
    "value",
    [datetime.date(2025, 1, 1), {1, 2}, object(), float("nan"), float("inf"), b"bytes"],
)
def test_validate_input_refuses_values_that_are_not_json_naming_the_input(value: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_input("acme/video", {"prompt": "ok", "start": value})
    assert caught.value.message.startswith("Invalid input for acme/video: start: is not JSON-serialisable")
    assert "prompt" not in caught.value.message


@pytest.mark.parametrize("model_id", ["acme/video", NANO_BANANA_EDIT])
@pytest.mark.parametrize("payload", [["prompt"], "prompt=x", None, 42])
def test_validate_input_refuses_inputs_that_are_not_an_object(model_id: str, payload: object) -> None:
    with pytest.raises(
        InvalidInputError, match=rf"Invalid input for {model_id}: inputs must be a JSON object"
    ):
        validate_input(model_id, payload)  # type: ignore[arg-type]


@pytest.mark.parametrize("model_id", ["acme/video", NANO_BANANA_EDIT])
def test_validate_input_refuses_input_names_that_are_not_strings(model_id: str) -> None:
    with pytest.raises(InvalidInputError, match=r"input names must be strings, not 1"):
        validate_input(model_id, {1: "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "model_id", ["", "google//nano-banana", "../etc/passwd", "a b", "google/nano?x=1", None]
)
def test_validate_input_refuses_a_bad_model_id_before_looking_at_inputs(model_id: object) -> None:
    with pytest.raises(InvalidInputError, match="Invalid RunComfy model id"):
        validate_input(model_id, {"prompt": "p"})  # type: ignore[arg-type]


def test_every_registered_model_class_is_a_model_input_with_its_id() -> None:
    for model_id, cls in INPUT_MODELS.items():
        assert issubclass(cls, ModelInput)
        assert cls.model_id == model_id
        assert cls.model_config["extra"] == "forbid"
