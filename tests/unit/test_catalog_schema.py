"""A model's published JSON Schema checks its input before paying, in the seed models' words.

The schemas are the emulator's, read over HTTP as the operators read RunComfy's,
plus small hand-written ones for the cases the emulator's catalog does not have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_runcomfy.client import InvalidInputError, RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, INPUT_MODELS, NANO_BANANA_EDIT
from airflow_provider_runcomfy.models.base import invalid_input
from airflow_provider_runcomfy.models.schema import (
    UnusableSchemaError,
    compile_schema,
    input_problems,
    undeclared_inputs,
)

VIDEO = "wan-ai/wan-2-2/image-to-video"
IMAGE = "https://images.example.com/in.png"


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> Iterator[RunComfyClient]:
    with RunComfyClient(token=runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        yield client


def problems(schema: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    return input_problems(compile_schema(schema), payload)


def published(client: RunComfyClient, model_id: str) -> dict[str, Any]:
    schema = client.get_model(model_id).input_schema
    assert schema is not None, f"the emulator publishes no schema for {model_id}"
    return schema


# -- the messages ---------------------------------------------------------------------------------


def test_a_video_models_input_errors_name_each_field_and_what_it_accepts(client: RunComfyClient) -> None:
    schema = published(client, VIDEO)
    found = problems(schema, {"image_url": IMAGE, "duration": 12, "resolution": "4k", "sead": 1})
    message = str(invalid_input(VIDEO, found))
    assert message.startswith(f"Invalid input for {VIDEO}: ")
    assert "duration: 12 is not one of 5, 10" in message
    assert "resolution: '4k' is not one of 480p, 720p" in message
    assert "prompt: is required" in message
    assert "sead: is not an input of this model (did you mean seed?)" in message
    assert "\n" not in message


def test_a_valid_input_has_no_problem(client: RunComfyClient) -> None:
    schema = published(client, VIDEO)
    assert problems(schema, {"prompt": "a cat walks", "image_url": IMAGE, "duration": 10}) == []


def test_the_seed_models_bounds_read_as_the_typed_models_say_them(client: RunComfyClient) -> None:
    schema = published(client, NANO_BANANA_EDIT)
    found = problems(schema, {"prompt": "x" * 1001, "image_urls": [], "num_images": 5, "output_format": 1})
    assert "prompt: must be at most 1000 characters (got 1001)" in found
    assert "image_urls: must have 1 to 10 items (got 0)" in found
    assert "num_images: must be between 1 and 4 (got 5)" in found
    assert any(line.startswith("output_format: ") for line in found)


@pytest.mark.parametrize(
    ("schema", "payload", "expected"),
    [
        ({"properties": {"seed": {"type": "integer"}}}, {"seed": "7"}, "seed: must be an integer (got '7')"),
        (
            {"properties": {"seed": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}},
            {"seed": 1.5},
            "seed: must be an integer (got 1.5)",
        ),
        (
            {"properties": {"steps": {"type": "integer", "minimum": 1}}},
            {"steps": 0},
            "steps: must be at least 1 (got 0)",
        ),
        (
            {"properties": {"urls": {"type": "array", "items": {"type": "string"}}}},
            {"urls": ["a", 2]},
            "urls[1]: must be a string (got 2)",
        ),
        (
            {"properties": {"mask": {"type": "object", "required": ["url"]}}},
            {"mask": {}},
            "mask.url: is required",
        ),
        (
            {"properties": {"size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"}}},
            {"size": "big"},
            "size: 'big' does not match the pattern '^[0-9]+x[0-9]+$'",
        ),
    ],
)
def test_each_kind_of_problem_names_its_field(
    schema: dict[str, Any], payload: dict[str, Any], expected: str
) -> None:
    assert problems(schema, payload) == [expected]


def test_a_long_value_is_cut_in_the_message() -> None:
    found = problems({"properties": {"mode": {"enum": ["a", "b"]}}}, {"mode": "z" * 5000})
    assert len(found[0]) < 200


def test_many_problems_are_summarised() -> None:
    schema = {"type": "object", "additionalProperties": False, "properties": {}}
    found = problems(schema, {f"k{i}": i for i in range(30)})
    assert len(found) == 11
    assert found[-1] == "... and 20 more problem(s)"


def test_inputs_a_permissive_schema_does_not_name_are_reported_for_a_warning() -> None:
    schema = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    assert undeclared_inputs(schema, {"prompt": "x", "promt": "y"}) == ["promt"]
    assert undeclared_inputs({**schema, "additionalProperties": False}, {"promt": "y"}) == []
    assert undeclared_inputs({"type": "object"}, {"anything": 1}) == []


# -- a schema from the network is not trusted -----------------------------------------------------


def test_a_schema_that_is_not_json_schema_is_unusable() -> None:
    with pytest.raises(UnusableSchemaError, match="not a valid JSON Schema"):
        compile_schema({"type": "whatever"})


def test_a_ref_to_another_document_is_never_fetched() -> None:
    validator = compile_schema({"$ref": "http://127.0.0.1:9/schema.json"})
    with pytest.raises(UnusableSchemaError, match="cannot be applied"):
        input_problems(validator, {"prompt": "x"})


def test_format_is_not_asserted() -> None:
    # RunComfy's own Ajv forms accept what they cannot check; so do we (a data: URI is no "uri" to some).
    assert problems({"properties": {"u": {"type": "string", "format": "uri"}}}, {"u": "not a uri"}) == []


# -- the seed models' typed inputs agree with the schemas the emulator serves ----------------------


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each property with ``anyOf [X, null]`` flattened to X: how optional fields are published."""
    flat = {}
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        flat[name] = {k: v for b in branches for k, v in b.items()}
    return flat


BOUNDS = ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "type")


@pytest.mark.parametrize("model_id", [FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT])
def test_seed_models_agree_with_the_published_schema(client: RunComfyClient, model_id: str) -> None:
    served = published(client, model_id)
    ours = INPUT_MODELS[model_id].model_json_schema()
    assert set(ours.get("required", [])) == set(served.get("required", [])), "required fields differ"
    theirs, mine = _fields(served), _fields(ours)
    assert set(mine) == set(theirs), "the inputs differ"
    for name in theirs:
        for rule in BOUNDS:
            assert mine[name].get(rule) == theirs[name].get(rule), f"{name}: {rule} differs"
    assert served.get("additionalProperties") is False  # so a misspelt input is refused by both


@pytest.mark.parametrize(
    ("model_id", "payload"),
    [
        (FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": IMAGE, "aspect_ratio": "4:5"}),
        (FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": IMAGE, "seed": True}),
        (NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [IMAGE] * 11}),
        (NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [IMAGE], "num_images": 0}),
        (NANO_BANANA_EDIT, {"prompt": "p", "image_urls": [IMAGE], "aspect_ratios": "1:1"}),
    ],
)
def test_what_a_seed_model_refuses_its_published_schema_refuses_too(
    client: RunComfyClient, model_id: str, payload: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInputError):
        INPUT_MODELS[model_id](**payload)
    assert problems(published(client, model_id), payload)
