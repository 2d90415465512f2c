"""The URL policy judges the address a URL really leads to, exempts only the emulator, and parses safely.

Address literals need no DNS (``getaddrinfo`` returns them as they are), so these checks run
offline; the redirects and the emulator's own files are real HTTP to the emulator, and
"never asked" is read from its journal.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.client._urlpolicy import URLMalformed, UrlPolicy, URLRefused, is_public_address
from airflow_provider_runcomfy.client.download import OutputDownloader, check_fetch_url, fetch, head
from airflow_provider_runcomfy.client.errors import MalformedURLError, OutputURLRejectedError
from airflow_provider_runcomfy.emulator import RunComfyEmulator

RUNCOMFY = "https://model-api.runcomfy.net"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


@contextmanager
def discard() -> Iterator[io.BytesIO]:
    yield io.BytesIO()


# -- IPv6 forms that embed an IPv4 address ---------------------------------------------------------

#: (IPv6 form, the IPv4 address it leads to). Teredo's client address is stored inverted.
EMBEDDING_PRIVATE = [
    ("2002:7f00:1::", "127.0.0.1"),  # 6to4 (the case)
    ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4 to a cloud's metadata service
    ("2002:a00:5::", "10.0.0.5"),  # 6to4 to a private network
    ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    ("::ffff:10.0.0.5", "10.0.0.5"),  # IPv4-mapped
    ("::10.0.0.5", "10.0.0.5"),  # IPv4-compatible (deprecated)
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo, client 127.0.0.1 (obfuscated)
    ("2001:0:a00:5:8000:63bf:f7f7:f7f7", "10.0.0.5"),  # Teredo through a private server
]


@pytest.mark.parametrize(("address", "leads_to"), EMBEDDING_PRIVATE)
@pytest.mark.parametrize("api_base_url", [RUNCOMFY, "http://127.0.0.1:8188"])
def test_an_ipv6_form_of_a_non_public_ipv4_is_refused(address: str, leads_to: str, api_base_url: str) -> None:
    with pytest.raises(OutputURLRejectedError, match=f"which leads to .*{leads_to}"):
        check_fetch_url(f"https://[{address}]/o.png", api_base_url=api_base_url)


def test_nat64_local_use_addresses_are_refused_whatever_they_embed() -> None:
    # RFC 8215: where the IPv4 address sits depends on the local network; local by definition.
    assert not is_public_address("64:ff9b:1::808:808")
    with pytest.raises(OutputURLRejectedError, match="non-public address"):
        check_fetch_url("https://[64:ff9b:1::a00:5]/o.png", api_base_url=RUNCOMFY)


@pytest.mark.parametrize(
    "address",
    [
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8: how an IPv6-only worker reaches a public CDN
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: public server, client 8.8.8.8
    ],
)
def test_an_ipv6_form_of_a_public_ipv4_is_judged_public(address: str) -> None:
    assert is_public_address(address)
    assert check_fetch_url(f"https://[{address}]/o.png", api_base_url=RUNCOMFY)


# -- a loopback API exempts its own host and port, nothing else ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://10.0.0.5/o.png",
        "https://127.0.0.1/o.png",
        "https://[2002:7f00:1::]/o.png",
    ],
)
def test_with_the_api_on_loopback_other_addresses_are_still_checked(emu: RunComfyEmulator, url: str) -> None:
    with pytest.raises(OutputURLRejectedError, match="non-public address"):
        check_fetch_url(url, api_base_url=emu.base_url)


def test_the_emulators_own_files_are_fetched_and_another_loopback_port_is_not(emu: RunComfyEmulator) -> None:
    own = emu.sample_url()
    assert fetch(own, api_base_url=emu.base_url).status_code == 200

    port = int(emu.base_url.rsplit(":", 1)[1])
    other = own.replace(f":{port}/", f":{port + 1}/")
    with pytest.raises(OutputURLRejectedError, match="API's own loopback host and port"):
        head(other, api_base_url=emu.base_url)


def test_an_emulator_file_redirecting_to_the_metadata_service_is_refused(emu: RunComfyEmulator) -> None:
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        request_id = client.submit(FLUX, {"prompt": "p", "image_url": emu.sample_url()}).request_id
        (url,) = client.wait_for_result(request_id, poll_interval=0.05).output_urls
    emu.add_fault("file", "redirect", location="https://169.254.169.254/latest/meta-data/")

    with (
        OutputDownloader(api_base_url=emu.base_url, attempts=1) as downloader,
        pytest.raises(OutputURLRejectedError, match="non-public address"),
    ):
        downloader.download(url, discard)


# -- a URL that does not parse is the policy's own error --------------------------------------------------

MALFORMED = [
    "https://[::1/x.png",
    "http://a[b/x.png",
    "https://cdn.example.net:99999999/x.png",
    "https://h:port/x",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_the_policys_error_from_check(url: str) -> None:
    with pytest.raises(URLMalformed) as caught:
        UrlPolicy(RUNCOMFY).check(url)
    assert isinstance(caught.value, URLRefused) and not isinstance(caught.value, ValueError)
    with pytest.raises(URLMalformed):
        UrlPolicy(RUNCOMFY).check("https://cdn.example.net/x.png", previous=url)


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("api_base_url", [RUNCOMFY, "http://127.0.0.1:8188"])
def test_a_malformed_url_is_the_policys_error_from_every_public_entry(url: str, api_base_url: str) -> None:
    with pytest.raises(MalformedURLError) as caught:
        check_fetch_url(url, api_base_url=api_base_url)
    assert isinstance(caught.value, OutputURLRejectedError)
    with pytest.raises(MalformedURLError):
        fetch(url, api_base_url=api_base_url)
    with (
        OutputDownloader(api_base_url=api_base_url, attempts=1) as downloader,
        pytest.raises(MalformedURLError),
    ):
        downloader.download(url, discard)


@pytest.mark.parametrize("location", ["https://[::1/x.png", "http://a[b/x.png", "https://h:port/x"])
def test_a_redirect_to_a_malformed_url_is_the_policys_error(emu: RunComfyEmulator, location: str) -> None:
    url = emu.sample_url()
    emu.add_fault("sample", "redirect", location=location)

    with (
        OutputDownloader(api_base_url=emu.base_url, attempts=1) as downloader,
        pytest.raises(MalformedURLError),
    ):
        downloader.download(url, discard)


def test_a_malformed_url_quoting_a_signature_is_shown_without_it() -> None:
    url = "https://[::1/x.png?X-Amz-Signature=f00dfeedbeef1234"
    with pytest.raises(MalformedURLError) as caught:
        check_fetch_url(url, api_base_url=RUNCOMFY)
    assert "f00dfeedbeef1234" not in caught.value.message
