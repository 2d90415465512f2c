"""The batch's copies on one event loop (``client._aiodownload``) keep every rule of the threads' downloads.

Real HTTP to the emulator on 127.0.0.1, each answer the emulator can give (a cut body, a 503,
an expired file, a redirect, a compression bomb, a slow file), side by side with
``OutputDownloader`` where the two must agree. The pool that runs them (``batch.copies``) is
checked here too: a local folder gets the loop, an object store the threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable
from typing import Any

import pytest
from _helpers_download import Sinks

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.client._aiodownload import AsyncOutputDownloader, _PinnedResolver
from airflow_provider_runcomfy.client.download import (
    OutputDownloader,
    OutputDownloadError,
    OutputTimeoutError,
    OutputTooLargeError,
    OutputTransferError,
    OutputUnavailableError,
    OutputURLRejectedError,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    return runcomfy_emulator


@pytest.fixture
def output_url(emu: RunComfyEmulator) -> Callable[[], str]:
    def run() -> str:
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(FLUX, {"prompt": "loop", "image_url": emu.sample_url()}).request_id
            (url,) = client.wait_for_result(request_id, poll_interval=0.05).output_urls
        return str(url)

    return run


def download(url: str, sinks: Sinks, **kwargs: Any) -> Any:
    """One download on a fresh loop, the downloader made and closed in it (as ``LoopCopies`` does)."""

    async def run() -> Any:
        downloader = AsyncOutputDownloader(**kwargs)
        try:
            return await downloader.download(url, sinks.open)
        finally:
            await downloader.aclose()

    return asyncio.run(run())


def test_an_output_arrives_as_the_threads_would_fetch_it(emu, output_url):
    url = output_url()
    sinks = Sinks()

    got = download(url, sinks, api_base_url=emu.base_url)

    with OutputDownloader(api_base_url=emu.base_url) as threads:
        expected = threads.download(url, Sinks().open)
    assert got == expected
    assert hashlib.sha256(sinks.kept).hexdigest() == got.sha256 and len(sinks.kept) == got.bytes
    loop_request = emu.journal.of("file")[0]
    assert "authorization" not in loop_request.headers and "cookie" not in loop_request.headers
    assert loop_request.headers["accept-encoding"] == "identity"


def test_a_file_announced_over_the_cap_fails_before_a_sink_is_opened(emu, output_url):
    url = output_url()
    sinks = Sinks()

    with pytest.raises(OutputTooLargeError, match="announced"):
        download(url, sinks, api_base_url=emu.base_url, max_bytes=100)

    assert sinks.opened == []


def test_a_body_cut_off_midway_is_retried_in_a_fresh_sink(emu, output_url):
    url = output_url()
    emu.add_fault("file", "truncate", after_bytes=100)
    sinks = Sinks()

    got = download(url, sinks, api_base_url=emu.base_url, attempts=3)

    assert len(sinks.opened) == 2 and sinks.discarded == sinks.opened[:1]
    assert hashlib.sha256(sinks.kept).hexdigest() == got.sha256


def test_a_body_cut_off_on_the_last_attempt_fails_as_retryable(emu, output_url):
    url = output_url()
    emu.add_fault("file", "truncate", after_bytes=100)
    sinks = Sinks()

    with pytest.raises(OutputTransferError) as caught:
        download(url, sinks, api_base_url=emu.base_url, attempts=1)

    assert caught.value.retryable
    assert sinks.discarded == sinks.opened and len(sinks.opened) == 1


def test_a_503_is_retried_and_an_expired_file_is_not(emu, output_url):
    url = output_url()
    emu.add_fault("file", "http", status=503)
    assert download(url, Sinks(), api_base_url=emu.base_url, attempts=2).bytes > 0
    assert [e.status_code for e in emu.journal.of("file")] == [503, 200]

    emu.expire(url.split("/files/")[1].split("/")[0])
    with pytest.raises(OutputUnavailableError) as caught:
        download(url, Sinks(), api_base_url=emu.base_url, attempts=3)
    assert "expired" in caught.value.message and not caught.value.retryable
    assert emu.journal.count("file") == 3


def test_a_compression_bomb_is_cut_at_the_cap(emu, output_url):
    url = output_url()
    emu.add_fault("file", "gzip_bomb", size=1 << 30)
    sinks = Sinks()

    with pytest.raises(OutputTooLargeError, match="more than 1000000 bytes"):
        download(url, sinks, api_base_url=emu.base_url, max_bytes=1_000_000, attempts=1)

    assert sinks.discarded == sinks.opened
    assert all(len(s.getvalue()) <= 1_000_000 for s in sinks.opened)


def test_a_redirect_is_followed_under_the_policy(emu, output_url):
    url = output_url()
    second = output_url()
    emu.add_fault("file", "redirect", location=second)
    got = download(url, Sinks(), api_base_url=emu.base_url)
    assert got.source_url == url and got.bytes > 0
    assert [e.status_code for e in emu.journal.of("file")] == [302, 200]

    elsewhere = f"http://127.0.0.1:{free_port()}/x.png"  # plain http, not the API's own host and port
    emu.add_fault("file", "redirect", location=elsewhere)
    with pytest.raises(OutputURLRejectedError, match="plain http"):
        download(url, Sinks(), api_base_url=emu.base_url)


def test_a_url_the_policy_refuses_is_never_requested(emu):
    for url in (f"http://127.0.0.1:{free_port()}/x.png", "https://user:pw@cdn.example/x.png", "ftp://x/y"):
        with pytest.raises(OutputURLRejectedError):
            download(url, Sinks(), api_base_url=emu.base_url)
    assert emu.journal.count("file") == 0


def test_a_slow_file_ends_at_the_downloads_deadline(emu, output_url):
    url = output_url()
    emu.add_fault("file", "delay", seconds=3.0)

    with pytest.raises(OutputDownloadError) as caught:
        download(url, Sinks(), api_base_url=emu.base_url, read_timeout=0.5, attempts=1, max_seconds=1.0)

    assert isinstance(caught.value, (OutputTransferError, OutputTimeoutError))


def test_a_checked_host_is_answered_with_the_checked_addresses_only():
    async def run() -> tuple[list[Any], list[Any]]:
        resolver = _PinnedResolver()
        resolver.pins["cdn.example"] = ["93.184.216.34", "2606:2800:220:1::1"]
        pinned = await resolver.resolve("CDN.example", 443)
        system = await resolver.resolve("localhost", 80)
        await resolver.close()
        return pinned, system

    pinned, system = asyncio.run(run())
    assert [(r["host"], r["port"], r["family"]) for r in pinned] == [
        ("93.184.216.34", 443, socket.AF_INET),
        ("2606:2800:220:1::1", 443, socket.AF_INET6),
    ]
    assert all(r["hostname"] == "CDN.example" for r in pinned)
    assert system and all(r["host"] in ("127.0.0.1", "::1") for r in system)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
