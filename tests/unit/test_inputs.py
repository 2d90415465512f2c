"""The typed inputs of the seed models, field by field: what a DAG author may write, and what they are told when wrong.

Pure unit tests: no HTTP, no Airflow. The allowed values are written out from
the API schemas (``_helpers_inputs``), not read back from the code, so a wrong
enum in the code makes a test fail. Image URLs: ``test_inputs_urls``; what every
input model and ``validate_input`` do: ``test_inputs_validate``.
"""

from __future__ import annotations

import pytest
from _helpers_inputs import (
    FLUX_ASPECT_RATIOS,
    IMAGE,
    NANO_ASPECT_RATIOS,
    NANO_OUTPUT_FORMATS,
    error_of,
    flux,
    nano,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_runcomfy.client.errors import InvalidInputError
from airflow_provider_runcomfy.models import (
    FLUX_KONTEXT_PRO_EDIT,
    INPUT_MODELS,
    NANO_BANANA_EDIT,
    FluxKontextProEditInput,
    ModelInput,
    NanoBananaEditInput,
)

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


def test_every_registered_model_class_is_a_model_input_with_its_id() -> None:
    for model_id, cls in INPUT_MODELS.items():
        assert issubclass(cls, ModelInput)
        assert cls.model_id == model_id
        assert cls.model_config["extra"] == "forbid"


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
