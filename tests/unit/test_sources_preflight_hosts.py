"""Pre-flight at volume: a host the worker cannot reach costs one attempt, and a batch need not wait.

The stories: 40 inputs on a name that cannot resolve (``.invalid``, real DNS) cost one lookup;
40 inputs on a loopback port that refuses cost one connection attempt; a port that never
answers (a full accept queue: connections time out) costs one timeout, not 40; the failure is
kept for ``host_failure_ttl`` and then the host is tried again; a host that answers is still
checked concurrently. ``run_ahead`` hands out the first result while later items are still
being checked. Lookups and connection attempts are counted by wrapping ``socket.getaddrinfo``
and ``socket.create_connection`` with counters that call the real ones.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from test_sources_preflight import API, FLUX, Route, Site, closed_port, flux, site, site_server

from airflow_provider_runcomfy.sources import InputPreparer, InputUnreachableError, Preflight
from airflow_provider_runcomfy.sources.preflight import HostGate, host_key, run_ahead

__all__ = ["site", "site_server"]  # the small server's fixtures, shared with test_sources_preflight

ITEMS = 40
#: A name that cannot resolve anywhere (RFC 6761): real DNS answers it with NXDOMAIN.
NOWHERE = "images.runcomfy-test.invalid"


class Counting:
    """``socket.getaddrinfo`` and ``socket.create_connection``, counted per host and per port."""

    def __init__(self) -> None:
        self.lookups: Counter[str] = Counter()
        self.connects: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._getaddrinfo = socket.getaddrinfo
        self._create_connection = socket.create_connection

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.lookups[str(host)] += 1
        return self._getaddrinfo(host, port, *args, **kwargs)

    def create_connection(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        with self._lock:
            self.connects[int(address[1])] += 1
        return self._create_connection(address, *args, **kwargs)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    counts = Counting()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", counts.getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", counts.create_connection)
    return counts


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port whose accept queue is full: new connections get no answer and time out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    filler = socket.socket()
    filler.settimeout(5)
    filler.connect(("127.0.0.1", port))  # the one queued connection (not counted: not create_connection)
    yield port
    filler.close()
    server.close()


@pytest.mark.parametrize(
    "api", [API, None], ids=["emulator API: httpx resolves", "RunComfy's API: the URL rules resolve"]
)
def test_inputs_on_a_host_that_does_not_resolve_cost_one_lookup(counting: Counting, api: str | None) -> None:
    payloads = [flux(f"https://{NOWHERE}/{n}.png") for n in range(ITEMS)]

    with InputPreparer(max_concurrency=8, check_only=True, mask=lambda _: None, api_base_url=api) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    assert [r.inputs[0].how for r in results if not isinstance(r, Exception)] == ["not checked"] * ITEMS
    assert counting.lookups[NOWHERE] == 1
    # Each item still says why it was not checked, and that the host was found down before.
    assert "not tried again" in results[-1].inputs[0].detail  # type: ignore[union-attr]


def test_a_batch_s_unreachable_inputs_are_one_warning_not_one_per_item(
    counting: Counting, caplog: pytest.LogCaptureFixture
) -> None:
    payloads = [flux(f"https://{NOWHERE}/{n}.png") for n in range(ITEMS)]

    with (
        caplog.at_level(logging.INFO),
        InputPreparer(max_concurrency=8, check_only=True, mask=lambda _: None, api_base_url=API) as preparer,
    ):
        preparer.prepare_many(FLUX, payloads)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"Could not check {ITEMS} RunComfy inputs before the submit" in warnings[0]
    assert NOWHERE in warnings[0] and "preflight='strict'" in warnings[0]
    assert f"Checked {ITEMS} RunComfy input(s): {ITEMS} not checked." in caplog.text


def test_inputs_on_a_port_that_refuses_cost_one_connection_attempt(counting: Counting) -> None:
    port = closed_port()
    payloads = [flux(f"http://127.0.0.1:{port}/{n}.png") for n in range(ITEMS)]

    with InputPreparer(
        max_concurrency=8, check_only=True, mask=lambda _: None, api_base_url=f"http://127.0.0.1:{port}"
    ) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    assert [r.inputs[0].how for r in results if not isinstance(r, Exception)] == ["not checked"] * ITEMS
    assert counting.connects[port] == 1


def test_with_strict_every_input_on_the_dead_host_fails_after_one_attempt(counting: Counting) -> None:
    port = closed_port()
    payloads = [flux(f"http://127.0.0.1:{port}/{n}.png") for n in range(ITEMS)]

    with InputPreparer(
        preflight="strict",
        max_concurrency=8,
        check_only=True,
        mask=lambda _: None,
        api_base_url=f"http://127.0.0.1:{port}",
    ) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    assert all(isinstance(r, InputUnreachableError) for r in results)
    assert "ConnectError" in str(results[0]) and "ConnectError" in str(results[-1])
    assert counting.connects[port] == 1


def test_a_port_that_never_answers_costs_one_timeout_not_one_per_input(
    counting: Counting, black_hole: int
) -> None:
    payloads = [flux(f"http://127.0.0.1:{black_hole}/{n}.png") for n in range(ITEMS)]

    with InputPreparer(
        max_concurrency=8,
        check_only=True,
        preflight_timeout=0.5,
        mask=lambda _: None,
        api_base_url=f"http://127.0.0.1:{black_hole}",
    ) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    details = [r.inputs[0].detail for r in results if not isinstance(r, Exception)]
    assert len(details) == ITEMS and all("no connection in time" in detail for detail in details)
    assert counting.connects[black_hole] == 1


def test_a_dead_host_is_tried_again_once_its_failure_ttl_has_passed(counting: Counting) -> None:
    port = closed_port()
    now = [0.0]
    api = f"http://127.0.0.1:{port}"
    with Preflight(api_base_url=api, host_failure_ttl=30, clock=lambda: now[0]) as preflight:
        for n in range(5):
            assert preflight.check("image_url", f"http://127.0.0.1:{port}/{n}.png", "image").warning
        assert counting.connects[port] == 1
        now[0] = 29.0
        preflight.check("image_url", f"http://127.0.0.1:{port}/a.png", "image")
        assert counting.connects[port] == 1
        now[0] = 31.0
        for n in range(5):
            preflight.check("image_url", f"http://127.0.0.1:{port}/b{n}.png", "image")
        assert counting.connects[port] == 2


def test_a_host_that_answers_is_not_held_to_one_check_at_a_time(site: Site) -> None:
    # The first check of a host goes alone; once it answered, the others run together.
    for n in range(12):
        site.routes[f"/{n}.png"] = Route(headers={"Content-Type": "image/png"}, seconds=0.1)
    payloads = [flux(f"{site.url}/{n}.png") for n in range(12)]

    with InputPreparer(
        max_concurrency=4, check_only=True, mask=lambda _: None, api_base_url=site.url
    ) as preparer:
        results = preparer.prepare_many(FLUX, payloads)

    assert [r.inputs[0].how for r in results if not isinstance(r, Exception)] == ["checked"] * 12
    # One at a time would show at most 2 (the next request can arrive as the last one's answer
    # is being counted out); 4 at a time shows 4 (or 5, for the same reason).
    assert site.most_in_flight >= 3


def test_a_failure_after_a_redirect_is_not_held_against_the_first_host(site: Site) -> None:
    site.routes["/moved.png"] = Route(status=302, headers={"Location": f"https://{NOWHERE}/x.png"})
    site.routes["/in.png"] = Route(headers={"Content-Type": "image/png"})

    with Preflight(api_base_url=site.url) as preflight:
        moved = preflight.check("image_url", f"{site.url}/moved.png", "image")
        fine = preflight.check("image_url", f"{site.url}/in.png", "image")

    assert moved.warning  # the redirect's target could not be reached...
    assert (fine.status, fine.warning) == (200, None)  # ...which says nothing about the first host
    assert [path for _, path, _ in site.requests] == ["/moved.png", "/in.png"]


def test_host_keys_tell_scheme_host_and_port_apart() -> None:
    assert host_key("https://CDN.example/a.png") == ("https", "cdn.example", 443)
    assert host_key("http://127.0.0.1:8188/a.png") == ("http", "127.0.0.1", 8188)
    assert host_key("https://[::1/x.png") is None  # malformed: the URL rules speak for it
    assert host_key("data:image/png;base64,AAAA") is None
    gate = HostGate(failure_ttl=0)
    gate.failed(("https", "a.example", 443), "refused")  # a zero TTL keeps nothing
    assert gate.enter(("https", "a.example", 443))[0] is None


# -- run_ahead ------------------------------------------------------------------------------------


def test_run_ahead_hands_out_the_first_result_while_later_items_are_still_being_worked() -> None:
    release = threading.Event()
    drawn: list[int] = []

    def items() -> Iterator[int]:
        for n in range(1000):
            drawn.append(n)
            yield n

    def work(n: int) -> int:
        if n >= 2 and not release.wait(30):  # later items are slow until released
            raise TimeoutError("never released")
        if n == 5:
            raise ValueError("item 5 is bad")
        return n * 10

    results = run_ahead(work, items(), workers=4, ahead=8)
    assert next(results) == (0, 0)
    assert next(results) == (1, 10)  # ready while items 2.. are still held
    assert len(drawn) <= 9  # the input is read lazily, a bounded window ahead
    release.set()
    rest = list(results)
    assert [n for n, _ in rest] == list(range(2, 1000))  # in order
    (bad,) = [r for n, r in rest if n == 5]
    assert isinstance(bad, ValueError) and str(bad) == "item 5 is bad"  # returned, not raised
    assert [r for n, r in rest if n == 999] == [9990]


def test_a_batch_takes_its_first_checked_item_while_later_ones_wait_and_the_dead_host_costs_one_lookup(
    counting: Counting,
) -> None:
    """The batch's use: 500 inputs on a host that does not resolve, streamed through ``run_ahead``."""
    drawn: list[int] = []

    def payloads() -> Iterator[dict[str, str]]:
        for n in range(500):
            drawn.append(n)
            yield flux(f"https://{NOWHERE}/{n}.png")

    with InputPreparer(check_only=True, mask=lambda _: None) as preparer:  # RunComfy's own API
        results = run_ahead(lambda payload: preparer.prepare(FLUX, payload), payloads(), workers=8, ahead=64)
        _, first = next(results)
        assert not isinstance(first, Exception) and first.inputs[0].how == "not checked"
        assert len(drawn) <= 65  # the first item is out while the rest of the file is unread
        rest = [prepared for _, prepared in results]

    assert len(rest) == 499 and all(not isinstance(r, Exception) for r in rest)
    assert counting.lookups[NOWHERE] == 1


def test_run_ahead_stops_reading_and_working_when_closed_early() -> None:
    drawn: list[int] = []
    worked: list[int] = []

    def items() -> Iterator[int]:
        for n in range(1000):
            drawn.append(n)
            yield n

    results = run_ahead(worked.append, items(), workers=2, ahead=4)
    for n, _ in results:
        if n == 3:
            break
    results.close()
    assert len(drawn) <= 8 and len(worked) <= 8
