"""What the provider fetches by itself, from where, and at what cost: the URL policy and the bombs.

Real HTTP to the emulator for everything it can serve (files, samples, bombs,
redirects); an ``httpx.MockTransport`` only to stand for an https CDN, which
the emulator is not -- and even then, a redirect it makes to loopback is sent
on to the real emulator if followed, so "nothing was requested" is read from
the emulator's own journal. Memory is measured in a fresh process
(``rss_probe``): the figure a bomb inflates. ``emu`` (tests/unit/conftest.py) is the
emulator with jobs that finish at once.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from rss_probe import peak_rss_growth

from airflow_provider_runcomfy.client import RunComfyClient, is_loopback_host
from airflow_provider_runcomfy.client._urlpolicy import ADDRESSES, PinnedTransport
from airflow_provider_runcomfy.client.download import (
    OutputDownloader,
    OutputTooLargeError,
    OutputTransferError,
    OutputURLRejectedError,
    check_fetch_url,
    check_output_url,
    fetch,
    head,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.contact_sheet import _cell_content, thumbnail, url_image

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
RUNCOMFY = "https://model-api.runcomfy.net"


@pytest.fixture
def output_url(emu: RunComfyEmulator) -> Callable[[], str]:
    def run() -> str:
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(FLUX, {"prompt": "p", "image_url": emu.sample_url()}).request_id
            (url,) = client.wait_for_result(request_id, poll_interval=0.05).output_urls
        return url

    return run


@contextmanager
def discard() -> Iterator[io.BytesIO]:
    yield io.BytesIO()


# -- the policy, URL by URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/o.png",
        "https://[::1]/o.png",
        "https://[::ffff:127.0.0.1]/o.png",
        "https://10.0.0.5/o.png",
        "https://192.168.1.10/o.png",
        "https://172.16.0.1/o.png",
        "https://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "https://[fe80::1]/o.png",
        "https://0.0.0.0/o.png",
        "https://100.64.0.1/o.png",
    ],
)
def test_https_to_a_non_public_address_is_refused_even_while_the_api_is_on_loopback(url: str) -> None:
    with pytest.raises(OutputURLRejectedError, match="non-public address"):
        check_fetch_url(url, api_base_url=RUNCOMFY)
    # An API on loopback (the emulator, an egress sidecar) exempts its own host and port, nothing else.
    with pytest.raises(OutputURLRejectedError, match="non-public address"):
        check_fetch_url(url, api_base_url="http://127.0.0.1:8188")


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return {"cdn.example.net": ["93.184.216.34"], "mixed.example.net": ["93.184.216.34", "10.1.2.3"]}[
            host
        ]

    assert check_fetch_url("https://cdn.example.net/o.png", api_base_url=None, resolver=resolver)
    with pytest.raises(OutputURLRejectedError, match=r"10\.1\.2\.3"):
        check_fetch_url("https://mixed.example.net/o.png", api_base_url=None, resolver=resolver)


def test_a_host_that_does_not_resolve_is_a_transfer_error() -> None:
    with pytest.raises(OutputTransferError, match="could not be resolved"):
        check_fetch_url("https://missing-image.invalid/o.png", api_base_url=RUNCOMFY)


@pytest.mark.parametrize("host", ["evil.localhost", "127.0.0.1.nip.io", "localhost.example.com"])
def test_names_that_merely_look_like_loopback_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(OutputURLRejectedError, match="plain http"):
        check_output_url(f"http://{host}:8188/files/x/0.png", api_base_url="http://127.0.0.1:8188")


def test_plain_http_only_to_the_loopback_apis_own_host_and_port() -> None:
    url = "http://127.0.0.1:8188/files/x/0.png"
    assert check_output_url(url, api_base_url="http://127.0.0.1:8188") == url
    assert check_output_url("http://LOCALHOST.:8188/x.png", api_base_url="http://localhost:8188/")
    with pytest.raises(OutputURLRejectedError, match="plain http"):
        check_output_url(url, api_base_url=RUNCOMFY)
    for elsewhere in (
        "http://cdn.example.net/0.png",
        "http://127.0.0.1:8189/0.png",  # another service on the same machine
        "http://127.0.0.1/0.png",
        "http://localhost:8188/0.png",  # another name: not the exact host the API was given
    ):
        with pytest.raises(OutputURLRejectedError, match="plain http"):
            check_output_url(elsewhere, api_base_url="http://127.0.0.1:8188")


# -- redirects are checked like the first URL --------------------------------------------------------


def public_resolver(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]


def cdn_redirecting_to(location: str) -> httpx.MockTransport:
    """An https CDN (mocked: the emulator has no TLS) that redirects; anything else goes out for real."""
    real = httpx.HTTPTransport()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.example.net":
            return httpx.Response(302, headers={"Location": location})
        return real.handle_request(request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("api_base_url", [RUNCOMFY, "emulator"])
def test_an_https_output_redirecting_to_a_loopback_http_endpoint_is_refused_and_it_is_never_asked(
    emu: RunComfyEmulator, output_url: Callable[[], str], api_base_url: str
) -> None:
    target = output_url()  # a real loopback http endpoint: the emulator's file server
    emu.journal.clear()
    downloader = OutputDownloader(
        api_base_url=emu.base_url if api_base_url == "emulator" else api_base_url,
        transport=cdn_redirecting_to(target),
        resolver=public_resolver,
    )

    with downloader, pytest.raises(OutputURLRejectedError, match="https:// to plain http://|plain http"):
        downloader.download("https://cdn.example.net/o/0.png", discard)

    assert emu.journal.count() == 0  # the loopback target received no request


def test_a_redirect_from_the_emulator_is_checked_like_the_first_url(
    emu: RunComfyEmulator, output_url: Callable[[], str]
) -> None:
    url = output_url()
    for location in ("http://10.0.0.7/0.png", "http://user:pw@127.0.0.1/0.png", "file:///etc/passwd"):
        emu.add_fault("file", "redirect", location=location)
        with (
            OutputDownloader(api_base_url=emu.base_url, attempts=1) as downloader,
            pytest.raises(OutputURLRejectedError),
        ):
            downloader.download(url, discard)


def test_a_redirect_to_loopback_within_the_emulator_is_followed(
    emu: RunComfyEmulator, output_url: Callable[[], str]
) -> None:
    url = output_url()
    emu.add_fault("file", "redirect", location=url)
    with OutputDownloader(api_base_url=emu.base_url) as downloader:
        assert downloader.download(url, discard).bytes > 0
    assert [e.status_code for e in emu.journal.of("file")][-2:] == [302, 200]


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """DNS rebinding: the name is resolved once, checked, and that address is what is connected to."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    transport = PinnedTransport(httpx.MockTransport(handler))
    request = httpx.Request(
        "GET", "https://cdn.example.net:8443/o.png", extensions={ADDRESSES: ["93.184.216.34"]}
    )
    transport.handle_request(request)

    (sent,) = seen
    assert (sent.url.host, sent.url.port) == ("93.184.216.34", 8443)
    assert sent.headers["host"] == "cdn.example.net:8443"  # the server still sees its name...
    assert sent.extensions["sni_hostname"] == "cdn.example.net"  # ...and TLS checks its certificate


# -- the fetch helpers (input pre-flights) ------------------------------------------------------------


def test_fetch_and_head_answer_within_the_policy(emu: RunComfyEmulator) -> None:
    url = emu.sample_url()
    fetched = fetch(url, api_base_url=emu.base_url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    headed = head(url, api_base_url=emu.base_url)
    assert headed.status_code in (200, 405) and headed.content == b""  # any status is returned, not raised
    missing = fetch(f"{emu.base_url}/samples/no-such-picture.png", api_base_url=emu.base_url)
    assert missing.status_code == 404
    with pytest.raises(OutputURLRejectedError):
        head(url, api_base_url=RUNCOMFY)  # plain http to loopback: only for the emulator's own tests
    with pytest.raises(OutputTooLargeError):
        fetch(url, api_base_url=emu.base_url, max_bytes=100)


# -- bombs: bounded memory ----------------------------------------------------------------------------

DOWNLOAD = """
import io
from contextlib import contextmanager
from airflow_provider_runcomfy.client.download import OutputDownloader

class Null:
    def write(self, data):
        pass

@contextmanager
def sink():
    yield Null()

def run(url, api_base_url, cap):
    with OutputDownloader(max_bytes=int(cap), attempts=1, api_base_url=api_base_url) as downloader:
        return downloader.download(url, sink)
"""


@pytest.mark.parametrize("kind", ["gzip_bomb", "zlib_bomb"])
def test_a_compressed_bomb_costs_no_more_than_the_cap(
    emu: RunComfyEmulator, output_url: Callable[[], str], kind: str
) -> None:
    url = output_url()
    emu.add_fault("file", kind, size=1 << 30)  # a few KB (gzip, gzip) or 1 MB (deflate): 1 GiB inflated
    cap = 4_000_000  # above what is sent, so only the inflated size can trip it
    measured = peak_rss_growth(DOWNLOAD, url, emu.base_url, str(cap))
    # Before: +3,074 MB peak RSS for gzip, gzip (the whole GiB inflated, then counted).
    assert measured.outcome.startswith("OutputTooLargeError"), measured
    assert f"more than {cap} bytes arrived" in measured.outcome
    assert measured.growth_mb < 50, measured


def test_a_bomb_on_an_input_sample_is_bounded_too(emu: RunComfyEmulator) -> None:
    emu.add_fault("sample", "gzip_bomb", size=1 << 30)
    measured = peak_rss_growth(
        """
        from airflow_provider_runcomfy.client.download import fetch
        def run(url, api_base_url):
            return fetch(url, api_base_url=api_base_url, max_bytes=1_000_000)
        """,
        emu.sample_url(),
        emu.base_url,
    )
    assert measured.outcome.startswith("OutputTooLargeError"), measured
    assert measured.growth_mb < 50, measured


CONTACT_SHEET = """
from airflow_provider_runcomfy.outputs.contact_sheet import thumbnail, url_image

def run(url, api_base_url):
    return thumbnail(url_image(url, api_base_url=api_base_url))
"""


def test_a_png_whose_data_inflates_past_its_header_is_refused_with_bounded_memory(
    emu: RunComfyEmulator, output_url: Callable[[], str]
) -> None:
    url = output_url()
    emu.add_fault("file", "png_bomb", size=400_000_000)  # 64 x 64 declared, 400 MB inflated
    measured = peak_rss_growth(CONTACT_SHEET, url, emu.base_url)
    # Before: a thumbnail, after +804 MB peak RSS.
    assert measured.outcome.startswith("FormatError"), measured
    assert "64 x 64" in measured.outcome
    assert measured.growth_mb < 50, measured


def test_the_contact_sheet_draws_a_placeholder_for_a_png_bomb_and_a_thumbnail_otherwise(
    emu: RunComfyEmulator, output_url: Callable[[], str]
) -> None:
    url = output_url()
    assert thumbnail(url_image(url, api_base_url=emu.base_url)) is not None
    emu.add_fault("file", "png_bomb", size=20_000_000)
    assert _cell_content(url_image(url, api_base_url=emu.base_url), 160) == "placeholder"
