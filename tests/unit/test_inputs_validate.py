"""What every input model does (typos, defaults, one message for all problems) and ``validate_input``.

Pure unit tests: no HTTP, no Airflow. The seed models' fields one by one are in
``test_inputs``, their image URLs in ``test_inputs_urls``.
"""

from __future__ import annotations

import datetime
import json

import pytest
from _helpers_inputs import IMAGE, NANO_ASPECT_RATIOS, NANO_INPUTS, error_of, flux, nano
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.models import (
    FLUX_KONTEXT_PRO_EDIT,
    NANO_BANANA_EDIT,
    NanoBananaEditInput,
    validate_input,
)

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


@given(inputs=NANO_INPUTS)
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
