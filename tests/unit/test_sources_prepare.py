"""The entry point's rules: which values are files, how long a signature lives, a batch's check pass."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from airflow.sdk import ObjectStoragePath  # noqa: F401 - Airflow configures logging on import: before caplog

from airflow_provider_runcomfy.sources import (
    DEFAULT_SIGN_EXPIRY,
    MAX_SIGN_EXPIRY,
    InputPreparer,
    InputSourceError,
    check_sign_expiry,
    prepare_input,
    sign_expiry_for,
)
from airflow_provider_runcomfy.sources.fields import find_targets

if TYPE_CHECKING:
    from tests.s3_fixture import MotoS3

pytest_plugins = ["tests.s3_fixture"]

NANO = "google/nano-banana/edit"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def no_mask(_: str) -> None:
    pass


def test_a_signature_lives_as_long_as_the_task_may_wait_plus_a_margin() -> None:
    assert sign_expiry_for(3600) == 3600 + 15 * 60
    assert sign_expiry_for(timedelta(hours=2)) == 2 * 3600 + 15 * 60
    assert sign_expiry_for(None) == DEFAULT_SIGN_EXPIRY == 24 * 3600
    assert sign_expiry_for(30 * 24 * 3600) == MAX_SIGN_EXPIRY  # S3 and GCS sign for 7 days at most


def test_sign_expiry_is_checked_when_the_dag_is_parsed() -> None:
    assert check_sign_expiry(timedelta(minutes=30)) == 1800
    assert check_sign_expiry(None) is None
    for bad in (10, 8 * 24 * 3600, "1h", True):
        with pytest.raises(ValueError, match="sign_expiry must be between 60 seconds and 7 days"):
            check_sign_expiry(bad)


def test_in_a_model_without_typed_inputs_only_file_like_fields_are_files() -> None:
    record = {
        "image_url": "https://cdn.example.com/a.png",
        "callback": "https://hooks.example.com/done",  # not a file: never fetched by the worker
        "prompt": "/imagine a cat",
        "init_path": "/data/a.png",
        "anything": "s3://bucket/b.png",  # a storage URL is a file wherever it is
        "frames": ["gs://bucket/1.png", "gs://bucket/2.png"],
    }
    found = {(t.label, t.kind, t.source) for t in find_targets("acme/some/model", record)}
    assert found == {
        ("image_url", "image", "url"),
        ("init_path", "file", "stored"),
        ("anything", "file", "stored"),
        ("frames[0]", "file", "stored"),
        ("frames[1]", "file", "stored"),
    }


def test_a_seed_model_s_files_are_its_image_fields_only() -> None:
    found = find_targets(
        NANO, {"prompt": "s3://not/a/file.png", "image_urls": ["/a.png", "data:image/png;base64,AA"]}
    )
    assert [(t.label, t.source) for t in found] == [("image_urls[0]", "stored")]


def test_a_batch_checks_every_item_first_without_signing_or_reading(
    moto_s3: MotoS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    moto_s3.put("s3://inputs/a.png", PNG)
    local = tmp_path / "b.png"
    local.write_bytes(PNG)
    items = [
        {"prompt": "p", "image_urls": ["s3://inputs/a.png"]},
        {"prompt": "p", "image_urls": [str(local)]},
        {"prompt": "p", "image_urls": ["s3://inputs/missing.png"]},
    ]

    with caplog.at_level(logging.INFO), InputPreparer(check_only=True, mask=no_mask) as preparer:
        checked = preparer.prepare_many(NANO, items)

    first, second, third = checked
    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    assert first.payload_to_send == items[0] and first.secrets_to_mask == ()
    assert second.payload_to_send == items[1]
    assert isinstance(third, InputSourceError) and "does not exist" in str(third)
    assert "Checked 3 RunComfy input(s): 2 checked, 1 invalid." in caplog.text

    # Just before the submit, the same items are prepared for real.
    with InputPreparer(preflight="off", mask=no_mask) as preparer:
        ready = preparer.prepare_many(NANO, items[:2])
    assert [r.inputs[0].how for r in ready if not isinstance(r, Exception)] == ["signed", "inlined"]


def test_a_bad_file_among_several_fails_the_whole_input(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(PNG)
    with pytest.raises(InputSourceError, match=r"image_urls\[1\] .*missing.png does not exist"):
        prepare_input(
            NANO, {"prompt": "p", "image_urls": [str(good), str(tmp_path / "missing.png")]}, mask=no_mask
        )
