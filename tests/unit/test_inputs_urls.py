"""Image URLs in the seed models' inputs: which are sent as written, which are refused, and how it is said.

Pure unit tests: no HTTP, no Airflow. The references are listed, by what the
provider makes of them, in ``_helpers_inputs``; storage paths are in
``test_sources_references``.
"""

from __future__ import annotations

import pytest
from _helpers_inputs import (
    ACCEPTED_URLS,
    HOST,
    HTTPS_URL,
    IMAGE,
    PATH,
    REFUSED_URLS,
    error_of,
    flux,
    nano,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_runcomfy.client.errors import InvalidInputError
from airflow_provider_runcomfy.models import MAX_DATA_URI_LENGTH, image_url_problem


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


@given(urls=st.lists(HTTPS_URL, min_size=1, max_size=10))
@settings(max_examples=50)
def test_any_list_of_1_to_10_https_urls_is_accepted_unchanged(urls: list[str]) -> None:
    assert nano(image_urls=urls).to_payload()["image_urls"] == urls


@given(urls=st.lists(HTTPS_URL, min_size=11, max_size=20))
@settings(max_examples=20)
def test_any_list_of_more_than_10_urls_is_refused(urls: list[str]) -> None:
    with pytest.raises(InvalidInputError, match=r"image_urls: must have 1 to 10 items"):
        nano(image_urls=urls)


@given(host=HOST.filter(lambda h: not h.endswith("localhost")), path=PATH)
@settings(max_examples=50)
def test_http_on_any_public_host_is_refused(host: str, path: str) -> None:
    with pytest.raises(InvalidInputError, match=r"image_url: .*http:// is accepted only on a loopback host"):
        flux(image_url=f"http://{host}/{path}")
