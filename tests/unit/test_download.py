"""Downloading an output file: streamed, capped, type-checked, hashed, and never with the API token.

Real HTTP to the emulator on 127.0.0.1 for everything it can do (files,
truncated bodies, 5xx, expired jobs, big files); an ``httpx.MockTransport``
only for what it cannot (https hosts, redirects, other content types,
bodies without a Content-Length).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from _helpers_download import Sinks

from airflow_provider_runcomfy.client import Outcome, OutcomeKind, RunComfyClient
from airflow_provider_runcomfy.client.download import (
    WRITE_BEHIND_BYTES,
    OutputContentTypeError,
    OutputDownloader,
    OutputTooLargeError,
    OutputTransferError,
    OutputUnavailableError,
    OutputURLRejectedError,
    check_max_output_bytes,
    check_output_url,
)
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


class StateStore(dict):  # type: ignore[type-arg]
    """What ``context["task_state_store"]`` is to the store: ``get`` and ``set`` of JSON values."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    return runcomfy_emulator


@pytest.fixture
def output_url(emu: RunComfyEmulator) -> Callable[..., str]:
    """Runs a flux job on the emulator and returns its output URL."""

    def run(prompt: str = "golden hour") -> str:
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(FLUX, {"prompt": prompt, "image_url": emu.sample_url()}).request_id
            result = client.wait_for_result(request_id, poll_interval=0.05)
        (url,) = result.output_urls
        return url

    return run


# -- against the emulator --------------------------------------------------------------------------


def test_an_output_is_streamed_with_its_size_sha256_and_type(emu, output_url):
    url = output_url()
    expected = httpx.get(url).content
    sinks = Sinks()

    with OutputDownloader(api_base_url=emu.base_url) as downloader:
        download = downloader.download(url, sinks.open)

    assert sinks.kept == expected and expected.startswith(b"\x89PNG")
    assert download.bytes == len(expected)
    assert download.sha256 == hashlib.sha256(expected).hexdigest()
    assert (download.content_type, download.extension) == ("image/png", "png")
    assert download.source_url == url


def test_an_operator_keeping_its_outputs_never_sends_the_token_to_the_output_host(
    emu: RunComfyEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own path after a job (connection with a token, ``output_dir``): no token on the fetch.

    The operator's hook holds the token; what keeps it off the output host is that the copy is
    fetched by the downloader's own transport, not the API client. The emulator records every
    request's headers, so a copy fetched through the hook's client would show its token here.
    """
    conn = {"conn_type": "runcomfy", "host": emu.base_url, "password": emu.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    emu.add_rule(num_outputs=2, output_kind="images")
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        request_id = client.submit(FLUX, {"prompt": "p", "image_url": emu.sample_url()}).request_id
        result = client.wait_for_result(request_id, poll_interval=0.05)
    outcome = Outcome(
        kind=OutcomeKind.SUCCEEDED,
        request_id=request_id,
        model_id=FLUX,
        outputs=tuple(result.output_urls),
        message="succeeded",
    )
    operator = FluxKontextProEditOperator(
        task_id="edit", prompt="p", image_url=emu.sample_url(), output_dir=str(tmp_path)
    )
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="edit", map_index=-1)
    context = {"ti": ti, "task": operator, "task_state_store": StateStore()}

    returned = operator.execute_complete(context, outcome.to_event())  # type: ignore[arg-type]

    assert len(returned["stored"]) == 2
    assert all(Path(copy["uri"].removeprefix("file://")).is_file() for copy in returned["stored"])
    assert "authorization" in emu.journal.last("submit").headers  # the journal does record the token
    fetches = emu.journal.of("file")
    assert len(fetches) == 2
    for fetch in fetches:
        assert "authorization" not in fetch.headers
        assert emu.token not in json.dumps(fetch.headers)


def test_the_downloader_takes_no_credentials_of_any_kind() -> None:
    """Nothing can hand it the token: no headers, auth, cookies or client among its arguments."""
    taken = set(inspect.signature(OutputDownloader).parameters)
    assert taken == {
        "max_bytes",
        "connect_timeout",
        "read_timeout",
        "attempts",
        "max_seconds",
        "api_base_url",
        "transport",
        "resolver",
    }


def test_a_file_announced_over_the_cap_fails_before_anything_is_written(emu, output_url):
    emu.add_rule(output_bytes=3_000_000)
    url = output_url()
    sinks = Sinks()

    with (
        OutputDownloader(api_base_url=emu.base_url, max_bytes=1_000_000) as downloader,
        pytest.raises(OutputTooLargeError) as caught,
    ):
        downloader.download(url, sinks.open)

    assert "max_output_bytes=1000000" in caught.value.message
    assert "announced" in caught.value.message
    assert not caught.value.retryable
    assert sinks.opened == []
    assert emu.journal.count("file") == 1  # not retried


def test_a_big_file_under_the_cap_arrives_whole(emu, output_url):
    emu.add_rule(output_bytes=5_000_000)
    url = output_url()
    digest = hashlib.sha256()

    class HashingSink:
        size = 0

        def write(self, data: bytes) -> None:
            self.size += len(data)
            digest.update(data)

    sink = HashingSink()

    @contextmanager
    def open_sink() -> Iterator[HashingSink]:
        yield sink

    with OutputDownloader(api_base_url=emu.base_url, max_bytes=6_000_000) as downloader:
        download = downloader.download(url, open_sink)

    assert sink.size == download.bytes and abs(download.bytes - 5_000_000) < 100
    assert download.sha256 == digest.hexdigest()


def test_a_download_cut_off_midway_is_retried_in_a_fresh_sink(emu, output_url):
    emu.add_rule(output_bytes=3_000_000)  # several chunks, so the cut lands after some were written
    url = output_url()
    expected = httpx.get(url).content
    emu.add_fault("file", "truncate", after_bytes=len(expected) // 2)
    sinks = Sinks()

    with OutputDownloader(api_base_url=emu.base_url, attempts=3) as downloader:
        download = downloader.download(url, sinks.open)

    assert len(sinks.opened) == 2
    assert len(sinks.discarded) == 1 and 0 < len(sinks.discarded[0].getvalue()) < len(expected)
    assert sinks.kept == expected
    assert download.sha256 == hashlib.sha256(expected).hexdigest()
    assert [e.fault for e in emu.journal.of("file")][-2:] == ["truncate", None]


def test_a_big_file_is_hashed_and_written_off_the_receiving_thread(emu, output_url):
    emu.add_rule(output_bytes=WRITE_BEHIND_BYTES + 3_000_000)
    url = output_url()
    expected = httpx.get(url).content
    writers: set[str] = set()

    class ThreadNotingSink(io.BytesIO):
        def write(self, data: Any, /) -> int:
            writers.add(threading.current_thread().name)
            return super().write(data)

    kept = ThreadNotingSink()

    @contextmanager
    def open_sink() -> Iterator[ThreadNotingSink]:
        yield kept

    with OutputDownloader(api_base_url=emu.base_url) as downloader:
        download = downloader.download(url, open_sink)

    assert kept.getvalue() == expected
    assert download.sha256 == hashlib.sha256(expected).hexdigest()
    assert writers == {"runcomfy-write-behind"}


def test_a_big_download_cut_off_midway_is_retried_in_a_fresh_sink(emu, output_url):
    emu.add_rule(output_bytes=WRITE_BEHIND_BYTES + 3_000_000)
    url = output_url()
    expected = httpx.get(url).content
    emu.add_fault("file", "truncate", after_bytes=len(expected) // 2)
    sinks = Sinks()

    with OutputDownloader(api_base_url=emu.base_url, attempts=3) as downloader:
        download = downloader.download(url, sinks.open)

    assert len(sinks.opened) == 2 and len(sinks.discarded) == 1
    assert 0 < len(sinks.discarded[0].getvalue()) < len(expected)
    assert sinks.kept == expected
    assert download.sha256 == hashlib.sha256(expected).hexdigest()


def test_a_sink_that_fails_while_a_big_file_arrives_ends_the_download_and_is_discarded(emu, output_url):
    emu.add_rule(output_bytes=WRITE_BEHIND_BYTES + 3_000_000)
    url = output_url()
    discarded: list[BaseException] = []

    class FullDisk:
        written = 0

        def write(self, data: bytes, /) -> None:
            if self.written > 2_000_000:
                raise OSError(28, "No space left on device")
            self.written += len(data)

    @contextmanager
    def open_sink() -> Iterator[FullDisk]:
        try:
            yield FullDisk()
        except BaseException as error:
            discarded.append(error)
            raise

    with OutputDownloader(api_base_url=emu.base_url) as downloader:
        with pytest.raises(OSError, match="No space left"):
            downloader.download(url, open_sink)

    assert len(discarded) == 1 and isinstance(discarded[0], OSError)
    assert not [t for t in threading.enumerate() if t.name == "runcomfy-write-behind"]


def test_a_download_cut_off_on_the_last_attempt_fails_as_retryable(emu, output_url):
    url = output_url()
    emu.add_fault("file", "truncate", after_bytes=100)
    sinks = Sinks()

    with (
        OutputDownloader(api_base_url=emu.base_url, attempts=1) as downloader,
        pytest.raises(OutputTransferError) as caught,
    ):
        downloader.download(url, sinks.open)

    assert caught.value.retryable
    assert "broke off" in caught.value.message or "ended after" in caught.value.message
    assert sinks.discarded == sinks.opened and len(sinks.opened) == 1


def test_a_503_from_the_output_host_is_retried(emu, output_url):
    url = output_url()
    emu.add_fault("file", "http", status=503)

    with OutputDownloader(api_base_url=emu.base_url, attempts=2) as downloader:
        download = downloader.download(url, Sinks().open)

    assert download.bytes > 0
    assert [e.status_code for e in emu.journal.of("file")] == [503, 200]


def test_an_expired_output_fails_at_once_and_says_why(emu, output_url):
    url = output_url()
    emu.expire(url.split("/files/")[1].split("/")[0])
    sinks = Sinks()

    with (
        OutputDownloader(api_base_url=emu.base_url, attempts=3) as downloader,
        pytest.raises(OutputUnavailableError) as caught,
    ):
        downloader.download(url, sinks.open)

    assert "404" in caught.value.message and "expired" in caught.value.message
    assert not caught.value.retryable
    assert emu.journal.count("file") == 1
    assert sinks.opened == []


# -- what the emulator cannot do: an https CDN, redirects, other types, no Content-Length ----------


def public_resolver(host: str, port: int) -> list[str]:
    """The made-up hosts of these tests resolve to a public address (documentation range aside)."""
    return ["93.184.216.34"]


def mock(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> OutputDownloader:
    return OutputDownloader(transport=httpx.MockTransport(handler), resolver=public_resolver, **kwargs)  # type: ignore[arg-type]


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


def test_a_body_without_content_length_is_cut_at_the_cap():
    def handler(request: httpx.Request) -> httpx.Response:
        chunks = (b"x" * 65536 for _ in range(100))  # 6.5 MB, chunked
        return httpx.Response(200, headers={"Content-Type": "image/png"}, content=chunks)

    sinks = Sinks()
    with mock(handler, max_bytes=1_000_000) as downloader, pytest.raises(OutputTooLargeError) as caught:
        downloader.download("https://cdn.example.net/out/0.png", sinks.open)

    assert "more than 1000000 bytes arrived" in caught.value.message
    assert sinks.discarded == sinks.opened and len(sinks.opened) == 1
    assert len(sinks.opened[0].getvalue()) <= 1_000_000


def test_an_html_page_is_not_kept_as_an_output():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/html"}, content=b"<html>expired</html>")

    sinks = Sinks()
    with mock(handler) as downloader, pytest.raises(OutputContentTypeError) as caught:
        downloader.download("https://cdn.example.net/out/0.png", sinks.open)

    assert "'text/html'" in caught.value.message
    assert sinks.opened == [] and len(seen) == 1


@pytest.mark.parametrize(
    ("url", "content_type", "expected"),
    [
        ("https://cdn.example.net/o/0.webp", "application/octet-stream", ("image/webp", "webp")),
        ("https://cdn.example.net/o/0.jpg?sig=abc", None, ("image/jpeg", "jpg")),
        ("https://cdn.example.net/o/clip", "video/mp4", ("video/mp4", "mp4")),
        ("https://cdn.example.net/o/0.png", "image/png; charset=binary", ("image/png", "png")),
    ],
)
def test_media_types_and_extensions(url, content_type, expected):
    headers = {"Content-Type": content_type} if content_type else {}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, content=PNG)

    with mock(handler) as downloader:
        download = downloader.download(url, Sinks().open)

    assert (download.content_type, download.extension) == expected


def test_octet_stream_without_an_image_extension_is_refused():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "application/octet-stream"}, content=PNG)

    with mock(handler) as downloader, pytest.raises(OutputContentTypeError):
        downloader.download("https://cdn.example.net/o/output", Sinks().open)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.net/o/0.png",
        "ftp://cdn.example.net/o/0.png",
        "https://user:secret@cdn.example.net/o/0.png",
        "file:///etc/passwd",
        "not a url",
    ],
)
def test_urls_that_are_not_https_or_carry_credentials_are_refused_before_any_request(url):
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request may be sent, got {request.url}")

    with mock(handler) as downloader, pytest.raises(OutputURLRejectedError) as caught:
        downloader.download(url, Sinks().open)
    assert "secret" not in caught.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8188/files/a/0.png", "http://127.0.0.1:8188/x.png"])
def test_plain_http_is_fine_on_loopback_while_the_api_is_there_too(url):
    assert check_output_url(url, api_base_url="http://127.0.0.1:8188") == url
    with pytest.raises(OutputURLRejectedError, match="loopback"):
        check_output_url(url)  # the API is RunComfy's: its outputs are https


def test_a_redirect_to_plain_http_elsewhere_is_refused():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://mirror.example.net/0.png"})

    with mock(handler) as downloader, pytest.raises(OutputURLRejectedError):
        downloader.download("https://cdn.example.net/o/0.png", Sinks().open)
    assert seen == ["https://cdn.example.net/o/0.png"]


def test_a_redirect_to_another_https_host_is_followed_without_credentials():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.example.net":
            return httpx.Response(
                302,
                headers={
                    "Location": "https://bucket.example.org/0.png?sig=1",
                    "Set-Cookie": "session=SECRET",
                },
            )
        return httpx.Response(200, headers={"Content-Type": "image/png"}, content=PNG)

    with mock(handler) as downloader:
        download = downloader.download("https://cdn.example.net/o/0.png", Sinks().open)

    assert download.bytes == len(PNG)
    assert [r.url.host for r in seen] == ["cdn.example.net", "bucket.example.org"]
    # A cookie the first host set never reaches the next: there is no cookie jar to carry it.
    assert [r.headers.get("cookie") for r in seen] == [None, None]


@pytest.mark.parametrize("value", [0, -1, 1.5, "200", True, None])
def test_max_output_bytes_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match="max_output_bytes"):
        check_max_output_bytes(value)
