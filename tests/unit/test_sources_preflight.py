"""Pre-flight of https inputs, over real HTTP: the emulator's samples, and a small server for odd answers.

The stories: a dead link fails before the submit, naming the field, the URL
and the status; a web page where a picture should be fails; a file over the
guide fails; a host the worker cannot reach is a warning (an error with
``strict``); ``off`` sends nothing; a batch checks its URLs concurrently, never
more at once than allowed. DNS (rebinding, one lookup per host) is in
test_sources_preflight_dns.py, on this module's ``Site``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.sources import (
    InputCheckError,
    InputPreparer,
    InputUnreachableError,
    Preflight,
    check_preflight,
    prepare_input,
)

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
NANO = "google/nano-banana/edit"
#: An API on loopback (the emulator): the URL rules then let pre-flight reach loopback hosts
#: over https; plain http only to the API's own host and port, so tests of a server on
#: loopback give that server's base URL as the API's.
API = "http://127.0.0.1:8188"
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    head_status: int | None = None  # answer HEAD with this instead (405: "HEAD refused")
    seconds: float = 0.0


class Site:
    """A real HTTP server on 127.0.0.1 answering what each test routes; it counts requests in flight.

    :param tls: serve https with this context (``Site.url`` still says http; the port is what counts).
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.hosts: list[str | None] = []  # the Host header of each request
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                site.answer(self, head=True)

            def do_GET(self) -> None:
                site.answer(self, head=False)

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                connection, address = super().get_request()
                with site._lock:
                    site.connections += 1  # counted before any TLS handshake
                return connection, address

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        with self._lock:
            self.requests.append((handler.command, handler.path, handler.headers.get("Range")))
            self.hosts.append(handler.headers.get("Host"))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        # A request stops counting as in flight before its answer is sent: once the client has the
        # answer it may send the next request before this thread ran on (seen on a loaded machine:
        # 5 counted at once under a bound of 4).
        try:
            route = self.routes.get(handler.path.split("?")[0], Route(status=404, body=b"not here"))
            time.sleep(route.seconds)
        finally:
            with self._lock:
                self.in_flight -= 1
        status = route.head_status if head and route.head_status else route.status
        handler.send_response(status)
        for name, value in route.headers.items():
            handler.send_header(name, value)
        if "Content-Length" not in route.headers:
            handler.send_header("Content-Length", str(len(route.body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(route.body)


@pytest.fixture(scope="module")
def site_server() -> Iterator[Site]:
    site = Site()
    yield site
    site.server.shutdown()


@pytest.fixture
def site(site_server: Site) -> Site:
    site_server.routes.clear()
    site_server.requests.clear()
    site_server.most_in_flight = 0
    return site_server


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flux(url: str) -> dict[str, str]:
    return {"prompt": "p", "image_url": url}


# -- against the emulator -------------------------------------------------------------------------


def test_a_reachable_picture_is_checked_and_sent_as_given(runcomfy_emulator: RunComfyEmulator) -> None:
    url = runcomfy_emulator.sample_url("portrait")
    prepared = prepare_input(FLUX, flux(url), mask=lambda _: None, api_base_url=runcomfy_emulator.base_url)
    assert prepared.payload_to_send == prepared.payload_to_record == flux(url)
    (report,) = prepared.inputs
    assert report.how == "checked"
    assert "image/png" in report.detail


def test_a_dead_link_fails_naming_the_field_the_url_and_the_status(
    runcomfy_emulator: RunComfyEmulator,
) -> None:
    url = f"{runcomfy_emulator.base_url}/samples/nosuchpicture.png?X-Amz-Signature=SECRET"
    with pytest.raises(InputCheckError) as caught:
        prepare_input(
            NANO,
            {"prompt": "p", "image_urls": [url]},
            mask=lambda _: None,
            api_base_url=runcomfy_emulator.base_url,
        )
    message = str(caught.value)
    assert f"image_urls[0] {runcomfy_emulator.base_url}/samples/nosuchpicture.png" in message
    assert "HTTP 404" in message and "nothing was submitted" in message
    assert "SECRET" not in message  # the query (a signature) is not shown
    assert caught.value.status_code == 404
    assert runcomfy_emulator.journal.count("submit") == 0


def test_a_host_too_slow_for_the_pre_flight_is_a_warning_and_the_input_goes_ahead(
    runcomfy_emulator: RunComfyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    runcomfy_emulator.add_fault("sample", "delay", seconds=2.0, times=None)
    url = runcomfy_emulator.sample_url("street")
    with caplog.at_level(logging.WARNING):
        prepared = prepare_input(
            FLUX,
            flux(url),
            preflight_timeout=0.3,
            mask=lambda _: None,
            api_base_url=runcomfy_emulator.base_url,
        )
    assert prepared.payload_to_send == flux(url)
    assert prepared.inputs[0].how == "not checked"
    assert "no answer in time" in caplog.text and "submitting anyway" in caplog.text


# -- against a small real server ----------------------------------------------------------------


def test_a_refused_connection_is_a_warning_with_warn_and_an_error_with_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/in.png"
    with caplog.at_level(logging.WARNING):
        prepared = prepare_input(FLUX, flux(url), mask=lambda _: None, api_base_url=url.rsplit("/", 1)[0])
    assert prepared.payload_to_send == flux(url)
    assert "ConnectError" in caplog.text
    with pytest.raises(
        InputUnreachableError, match=r"image_url http://127.0.0.1:\d+/in.png: the worker could not check it"
    ):
        prepare_input(
            FLUX, flux(url), preflight="strict", mask=lambda _: None, api_base_url=url.rsplit("/", 1)[0]
        )


def test_pre_flight_off_sends_no_request_at_all(site: Site) -> None:
    prepared = prepare_input(
        FLUX, flux(f"{site.url}/missing.png"), preflight="off", mask=lambda _: None, api_base_url=site.url
    )
    assert prepared.inputs[0].how == "sent as is"
    assert site.requests == []


def test_a_web_page_where_a_picture_should_be_fails(site: Site) -> None:
    site.routes["/in.png"] = Route(
        headers={"Content-Type": "text/html; charset=utf-8"}, body=b"<html>login</html>"
    )
    with pytest.raises(
        InputCheckError, match=r"image_url .*/in.png: it answered HEAD 200 with Content-Type 'text/html'"
    ):
        prepare_input(FLUX, flux(f"{site.url}/in.png"), mask=lambda _: None, api_base_url=site.url)


def test_a_file_over_the_size_guide_fails(site: Site) -> None:
    site.routes["/huge.png"] = Route(headers={"Content-Type": "image/png", "Content-Length": "60000000"})
    with (
        Preflight(api_base_url=site.url) as preflight,
        pytest.raises(InputCheckError, match="it is 60.0 MB, over RunComfy's guide of 52.4 MB"),
    ):
        preflight.check("image_url", f"{site.url}/huge.png", "image")


def test_an_untyped_answer_is_judged_by_its_first_bytes(site: Site) -> None:
    site.routes["/in"] = Route(headers={"Content-Type": "binary/octet-stream"}, body=PNG_HEAD)
    site.routes["/notes"] = Route(
        headers={"Content-Type": "application/octet-stream"}, body=b"hello world, not a picture"
    )
    with Preflight(api_base_url=site.url) as preflight:
        result = preflight.check("image_url", f"{site.url}/in", "image")
        assert (result.method, result.media_type) == ("GET", "image/png")
        with pytest.raises(InputCheckError, match="are not a PNG, JPEG or WebP image"):
            preflight.check("image_url", f"{site.url}/notes", "image")
    assert [r for r in site.requests if r[1] == "/in"] == [
        ("HEAD", "/in", None),
        ("GET", "/in", "bytes=0-15"),
    ]


def test_a_host_that_refuses_head_gets_a_ranged_get(site: Site) -> None:
    site.routes["/in.png"] = Route(
        status=206,
        head_status=405,
        headers={"Content-Type": "image/png", "Content-Range": "bytes 0-15/1234567"},
        body=PNG_HEAD[:16],
    )
    with Preflight(api_base_url=site.url) as preflight:
        result = preflight.check("image_url", f"{site.url}/in.png", "image")
    assert (result.method, result.status, result.size) == ("GET", 206, 1234567)
    assert site.requests == [("HEAD", "/in.png", None), ("GET", "/in.png", "bytes=0-15")]


def test_a_forbidden_url_fails_after_both_requests(site: Site) -> None:
    site.routes["/private.png"] = Route(status=403, body=b"<Error>AccessDenied</Error>")
    with (
        Preflight(api_base_url=site.url) as preflight,
        pytest.raises(InputCheckError, match="GET answered HTTP 403"),
    ):
        preflight.check("image_url", f"{site.url}/private.png", "image")


def test_a_server_error_is_not_the_inputs_fault(site: Site) -> None:
    site.routes["/in.png"] = Route(status=503)
    with Preflight(api_base_url=site.url) as preflight:
        assert preflight.check("image_url", f"{site.url}/in.png", "image").warning == "HEAD answered HTTP 503"


def test_a_batch_checks_its_urls_concurrently_and_bounded(site: Site) -> None:
    for n in range(12):
        site.routes[f"/{n}.png"] = Route(headers={"Content-Type": "image/png"}, seconds=0.1)
    payloads = [flux(f"{site.url}/{n}.png") for n in range(12)] + [flux(f"{site.url}/gone.png")]

    with InputPreparer(max_concurrency=4, mask=lambda _: None, api_base_url=site.url) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    assert [type(r).__name__ for r in results] == ["Prepared"] * 12 + ["InputCheckError"]
    assert "gone.png: HEAD answered HTTP 404" in str(results[-1])
    assert 1 < site.most_in_flight <= 4


def test_the_mode_is_checked_when_the_dag_is_parsed() -> None:
    assert check_preflight("strict") == "strict"
    with pytest.raises(
        ValueError, match="preflight must be one of 'warn' \\(the default\\), 'strict' or 'off'"
    ):
        check_preflight("on")


def test_with_runcomfy_s_own_api_a_loopback_input_is_not_fetched_by_the_worker(site: Site) -> None:
    # Against the real API, the URL rules keep the worker off loopback and private hosts.
    site.routes["/in.png"] = Route(headers={"Content-Type": "image/png"})
    with Preflight() as preflight:
        result = preflight.check("image_url", f"{site.url}/in.png", "image")
    assert result.warning and "Refusing to fetch" in result.warning
    assert site.requests == []
