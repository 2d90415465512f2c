"""Files in the user's storage are accepted as image inputs when the DAG is parsed, as what they are.

No I/O happens here (this runs at DAG parse time): the shape is checked, the
value is kept as the user wrote it, and ``sources`` signs or inlines it when
the task runs. The paths are listed with the other image references in
``_helpers_inputs``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers_inputs import NOT_STORAGE_PATHS, STORAGE_PATHS
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.client import InvalidInputError
from airflow_provider_runcomfy.models import (
    MAX_DATA_URI_BYTES,
    MAX_DATA_URI_LENGTH,
    FluxKontextProEditInput,
    NanoBananaEditInput,
    image_url_problem,
    is_storage_reference,
    validate_input,
)

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"


@pytest.mark.parametrize("path", STORAGE_PATHS)
def test_a_storage_path_is_accepted_and_kept_as_written(path: str) -> None:
    assert is_storage_reference(path)
    assert image_url_problem(path) is not None  # not a URL RunComfy could fetch as it is
    assert FluxKontextProEditInput(prompt="p", image_url=path).to_payload()["image_url"] == path
    assert validate_input(NANO, {"prompt": "p", "image_urls": [path]})["image_urls"] == [path]


@pytest.mark.parametrize("value", NOT_STORAGE_PATHS)
def test_other_values_are_not_storage_paths(value: str) -> None:
    assert not is_storage_reference(value)


def test_a_relative_path_is_refused_when_the_dag_is_parsed() -> None:
    with pytest.raises(InvalidInputError, match=r"image_url: 'a.png' is not an absolute URL"):
        FluxKontextProEditInput(prompt="p", image_url="a.png")


def test_an_object_storage_path_becomes_its_string_form_with_its_connection() -> None:
    given = ObjectStoragePath("s3://aws_default@bucket/in/a.png")
    payload = validate_input(FLUX, {"prompt": "p", "image_url": given})
    assert payload["image_url"] == "s3://aws_default@bucket/in/a.png"
    assert ObjectStoragePath(payload["image_url"]).conn_id == "aws_default"


def test_path_objects_are_accepted_in_image_lists_and_any_model_input() -> None:
    payload = NanoBananaEditInput(
        prompt="p", image_urls=[Path("/data/a.png"), ObjectStoragePath("file:///data/b.png")]
    ).to_payload()
    assert payload["image_urls"] == ["/data/a.png", "file:///data/b.png"]
    # A model with no typed input: the path travels as text, which sources reads when the task runs.
    other = validate_input("acme/some/model", {"video": ObjectStoragePath("s3://b/v.mp4"), "n": 2})
    assert other == {"video": "s3://b/v.mp4", "n": 2}


def test_bytes_are_still_not_a_path() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        FluxKontextProEditInput(prompt="p", image_url=b"/tmp/a.png")


def test_the_data_uri_limit_is_the_base64_of_six_mib() -> None:
    assert MAX_DATA_URI_BYTES == 6 * 1024 * 1024
    # A 6 MiB file's data URI, with the longest header an image type has, is within the limit.
    assert len("data:image/webp;base64,") + 4 * -(-MAX_DATA_URI_BYTES // 3) <= MAX_DATA_URI_LENGTH
