"""What the input-model tests share: the seed models' allowed values, builders, and image references.

The allowed values are written out from the API schemas (docs/seeds), not read
back from the code, so a wrong enum in the code makes a test fail. The image
references are listed in one place, by what the provider makes of each: a URL
RunComfy can fetch as it is, a path in the user's storage (signed or inlined
when the task runs), or something refused when the DAG is parsed.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import strategies as st

from airflow_provider_runcomfy.client.errors import InvalidInputError
from airflow_provider_runcomfy.models import FluxKontextProEditInput, NanoBananaEditInput

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


def error_of(build: Callable[..., object], **fields: object) -> str:
    """The message a user sees when ``build(**fields)`` is refused."""
    with pytest.raises(InvalidInputError) as caught:
        build(**fields)
    return caught.value.message


# -- image references, by what the provider makes of them -------------------------------------------

#: Sent to RunComfy exactly as written.
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

#: Paths in the user's storage: kept as written at parse time, signed or inlined when the task runs.
STORAGE_PATHS = [
    "s3://bucket/a.png",
    "s3://aws_default@bucket/in/a.png",
    "gs://bucket/a.png",
    "abfs://container/a.png",
    "file:///tmp/a.png",
    "memory://pictures/a.png",
    "/tmp/a.png",
    "/data/my pictures/a.png",
]

#: Neither a URL RunComfy can fetch nor a storage path: refused when the DAG is parsed.
REFUSED_URLS = [
    "http://example.com/a.png",
    "http://10.0.0.1/a.png",
    "http://192.168.1.5/a.png",
    "http://[2001:db8::1]/a.png",
    "ftp://example.com/a.png",
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

#: Not storage paths, whatever else they are (some are URLs, the rest refused).
NOT_STORAGE_PATHS = [
    "a.png",  # relative: depends on the worker's working directory
    "pictures/a.png",
    "//example.com/a.png",  # scheme-relative URL
    "ftp://example.com/a.png",
    "s3://",
    " /tmp/a.png",
    "/tmp/a.png\n",
    "https://example.com/a.png",
]

# -- hypothesis strategies ------------------------------------------------------------------------

HOST = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?){0,3}\.[a-z]{2,6}",
    fullmatch=True,
)
PATH = st.text(alphabet=string.ascii_letters + string.digits + "-._~%/", max_size=40)
HTTPS_URL = st.builds(lambda host, path: f"https://{host}/{path}", HOST, PATH)

#: Any valid nano-banana/edit input.
NANO_INPUTS = st.builds(
    NanoBananaEditInput,
    prompt=st.text(max_size=1000),
    image_urls=st.lists(HTTPS_URL | st.just(PNG_DATA_URI), min_size=1, max_size=10),
    aspect_ratio=st.none() | st.sampled_from(NANO_ASPECT_RATIOS),
    output_format=st.none() | st.sampled_from(NANO_OUTPUT_FORMATS),
    num_images=st.none() | st.integers(1, 4),
)
