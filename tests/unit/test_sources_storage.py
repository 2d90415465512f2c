"""Input files in storage: local files go inline, S3 objects (a real S3 API: moto) go as pre-signed URLs.

Each story runs the real thing: files on disk, objects in moto's S3 server read
through s3fs and ``ObjectStoragePath``, pre-signed URLs fetched over HTTP.
"""

from __future__ import annotations

import base64
import logging
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from airflow_provider_runcomfy.models import MAX_DATA_URI_BYTES, validate_input
from airflow_provider_runcomfy.sources import (
    SIZE_GUIDES,
    InputSourceError,
    prepare_input,
    prepare_stored,
    sniff_image,
)

if TYPE_CHECKING:
    from tests.s3_fixture import MotoS3

pytest_plugins = ["tests.s3_fixture"]

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"


def png(width: int = 2, height: int = 2, padding: int = 0) -> bytes:
    """A valid PNG; ``padding`` bytes of a private chunk make it as large as a test needs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if padding:
        body += chunk(b"rcPd", b"\x00" * padding)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32


class Masked(list[str]):
    """Stands in for Airflow's ``mask_secret``: records what was given to the masker."""

    def __call__(self, secret: str) -> None:
        self.append(secret)


def test_image_types_are_told_by_their_magic_bytes() -> None:
    assert sniff_image(png()) == "image/png"
    assert sniff_image(JPEG) == "image/jpeg"
    assert sniff_image(WEBP) == "image/webp"
    assert sniff_image(b"GIF89a" + b"\x00" * 10) is None
    assert sniff_image(b"<html><body>Not found") is None


# -- local files: inline ---------------------------------------------------------------------------


def test_a_local_png_is_sent_inline_and_the_path_is_recorded(tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    picture.write_bytes(png())
    masked = Masked()
    payload = validate_input(FLUX, {"prompt": "p", "image_url": str(picture)})

    prepared = prepare_input(FLUX, payload, mask=masked)

    sent = prepared.payload_to_send["image_url"]
    assert sent == "data:image/png;base64," + base64.b64encode(png()).decode()
    assert prepared.payload_to_record == {"prompt": "p", "image_url": str(picture)}
    assert validate_input(FLUX, prepared.payload_to_send) == prepared.payload_to_send  # sendable
    assert prepared.secrets_to_mask == () and masked == []  # nothing secret in a data URI
    (report,) = prepared.inputs
    assert (report.field, report.how) == ("image_url", "inlined")
    assert "image/png" in report.detail


@pytest.mark.parametrize(("data", "media_type"), [(JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_jpeg_and_webp_files_are_inlined_with_their_type(
    tmp_path: Path, data: bytes, media_type: str
) -> None:
    picture = tmp_path / "in.bin"  # the name says nothing: the bytes do
    picture.write_bytes(data)
    stored = prepare_stored("image_url", f"file://{picture}", "image", expiry=3600)
    assert stored.value.startswith(f"data:{media_type};base64,")
    assert stored.how == "inlined" and stored.secret is None


def test_a_local_file_of_exactly_the_data_uri_limit_is_inlined(tmp_path: Path) -> None:
    picture = tmp_path / "limit.png"
    data = png(padding=MAX_DATA_URI_BYTES - len(png()) - 12)
    assert len(data) == MAX_DATA_URI_BYTES
    picture.write_bytes(data)
    prepared = prepare_input(NANO, {"prompt": "p", "image_urls": [str(picture)]}, mask=Masked())
    # What is sent passes the model's own data-URI rule too.
    validate_input(NANO, prepared.payload_to_send)


def test_a_local_file_over_the_data_uri_limit_is_refused_with_what_to_do(tmp_path: Path) -> None:
    picture = tmp_path / "big.png"
    picture.write_bytes(png(padding=MAX_DATA_URI_BYTES))
    with pytest.raises(InputSourceError) as caught:
        prepare_input(NANO, {"prompt": "p", "image_urls": [str(picture)]}, mask=Masked())
    message = str(caught.value)
    assert message.startswith(f"image_urls[0] {picture} is 6.3 MB")
    assert "data: URI, which RunComfy accepts up to 6 MiB" in message
    assert "s3://" in message


def test_a_file_over_the_image_guide_is_refused_without_being_read(tmp_path: Path) -> None:
    picture = tmp_path / "huge.png"
    with picture.open("wb") as file:  # sparse: 60 MB on paper, nothing on disk
        file.write(png())
        file.truncate(SIZE_GUIDES["image"] + 1)
    with pytest.raises(InputSourceError, match=r"over RunComfy's guide of 52.4 MB for an image"):
        prepare_stored("image_url", str(picture), "image", expiry=3600)


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "in.png"
    page.write_bytes(b"<!doctype html><title>404</title>")
    with pytest.raises(
        InputSourceError, match=r"is not a PNG, JPEG or WebP image \(its first bytes are b'<!doctyp'\)"
    ):
        prepare_stored("image_url", str(page), "image", expiry=3600)


def test_a_missing_file_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputSourceError, match=r"image_url .*/nope.png does not exist"):
        prepare_stored("image_url", str(tmp_path / "nope.png"), "image", expiry=3600)
    with pytest.raises(InputSourceError, match="is a directory, not a file"):
        prepare_stored("image_url", str(tmp_path), "image", expiry=3600)


def test_a_video_on_storage_that_cannot_sign_is_refused(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(InputSourceError, match="RunComfy takes only images inline"):
        prepare_input("acme/video/model", {"video_url": f"file://{clip}"}, mask=Masked())


def test_memory_storage_is_inlined_too() -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.sources import open_reference

    open_reference("memory://runcomfy-unit/x")  # attaches fsspec's memory filesystem
    ObjectStoragePath("memory://runcomfy-unit/in.png").write_bytes(png())
    stored = prepare_stored("image_url", "memory://runcomfy-unit/in.png", "image", expiry=3600)
    assert stored.how == "inlined" and stored.value.startswith("data:image/png;base64,")


# -- S3 (moto): pre-signed -----------------------------------------------------------------------


def test_an_s3_object_is_sent_as_a_pre_signed_url_that_serves_it(moto_s3: MotoS3) -> None:
    data = png(padding=7_000_000)  # over the data-URI limit: signing does not care
    moto_s3.put("s3://inputs/people/in.png", data)
    masked = Masked()

    prepared = prepare_input(
        FLUX, {"prompt": "p", "image_url": "s3://inputs/people/in.png"}, sign_expiry=900, mask=masked
    )

    url = prepared.payload_to_send["image_url"]
    assert url.startswith(f"{moto_s3.endpoint_url}/inputs/people/in.png?")
    assert httpx.get(url, timeout=10).content == data  # anyone holding it can fetch it: a credential
    assert prepared.payload_to_record["image_url"] == "s3://inputs/people/in.png"
    assert url in prepared.secrets_to_mask and url in masked
    assert set(prepared.secrets_to_mask) == set(masked)
    (report,) = prepared.inputs
    assert report.how == "signed" and "valid for 15 min" in report.detail
    assert url not in report.describe()


def test_a_missing_s3_object_is_refused_before_anything_is_sent(moto_s3: MotoS3) -> None:
    moto_s3.bucket("inputs")
    with pytest.raises(InputSourceError, match=r"image_urls\[1\] s3://inputs/typo.png does not exist"):
        prepare_input(
            NANO,
            {"prompt": "p", "image_urls": [moto_s3.put("s3://inputs/a.png", png()), "s3://inputs/typo.png"]},
            mask=Masked(),
        )


def test_an_s3_object_that_is_not_an_image_is_refused(moto_s3: MotoS3) -> None:
    moto_s3.put("s3://inputs/notes.png", b"just some notes")
    with pytest.raises(InputSourceError, match="is not a PNG, JPEG or WebP image"):
        prepare_input(FLUX, {"prompt": "p", "image_url": "s3://inputs/notes.png"}, mask=Masked())


def test_a_model_without_typed_inputs_gets_its_paths_signed_and_keeps_its_other_values(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    from airflow.sdk import ObjectStoragePath

    moto_s3.put("s3://inputs/mask.png", png())
    moto_s3.put("s3://inputs/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    local = tmp_path / "ref.png"
    local.write_bytes(png())
    payload = validate_input(
        "acme/some/model",
        {
            "mask_image": ObjectStoragePath("s3://inputs/mask.png"),
            "video": "s3://inputs/clip.mp4",
            "reference_url": str(local),
            "prompt": "/imagine a cat",  # a bare path-like text in a field that is not a file
            "count": 2,
        },
    )

    prepared = prepare_input("acme/some/model", payload, mask=Masked())

    sent = prepared.payload_to_send
    assert sent["mask_image"].startswith(f"{moto_s3.endpoint_url}/inputs/mask.png?")
    assert sent["video"].startswith(f"{moto_s3.endpoint_url}/inputs/clip.mp4?")  # not type-checked
    assert sent["reference_url"].startswith("data:image/png;base64,")
    assert (sent["prompt"], sent["count"]) == ("/imagine a cat", 2)
    assert prepared.payload_to_record == {
        "mask_image": "s3://inputs/mask.png",
        "video": "s3://inputs/clip.mp4",
        "reference_url": str(local),
        "prompt": "/imagine a cat",
        "count": 2,
    }


def test_a_connection_in_the_url_without_its_provider_says_what_to_install(moto_s3: MotoS3) -> None:
    with pytest.raises(InputSourceError, match="apache-airflow-providers-amazon"):
        prepare_stored("image_url", "s3://aws_default@inputs/a.png", "image", expiry=3600)


def test_the_log_says_what_was_done_without_the_pre_signed_url(
    moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    moto_s3.put("s3://inputs/a.png", png())
    with caplog.at_level(logging.INFO, logger="airflow_provider_runcomfy"):
        prepared = prepare_input(NANO, {"prompt": "p", "image_urls": ["s3://inputs/a.png"]}, mask=Masked())
    (url,) = prepared.payload_to_send["image_urls"]
    assert "RunComfy input image_urls[0]: s3://inputs/a.png signed (image/png" in caplog.text
    assert url not in caplog.text and "Signature" not in caplog.text


def test_an_input_no_filesystem_can_read_names_its_field_and_reading() -> None:
    """Inputs and ``output_dir`` share one resolver; each error names its own argument and access."""
    with pytest.raises(
        InputSourceError, match=r"image_urls\[1\] 'nosuchfs://b/a.png': no filesystem can read nosuchfs://"
    ):
        prepare_stored("image_urls[1]", "nosuchfs://b/a.png", "image", expiry=3600)
