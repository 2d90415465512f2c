"""Pre-flight and DNS: the connection goes where the check looked, and a batch asks once per host.

A DNS answer that changes after the check (DNS rebinding) cannot move the
pre-flight to a loopback endpoint; a batch of inputs on one host resolves it
once. DNS and routing cannot be made to lie offline, so a ``Network`` stands in
for them (``socket.getaddrinfo`` and ``socket.create_connection``: the worker's
view of DNS and routes); everything above it is real -- httpx, TLS with a real
certificate for the name, real servers on 127.0.0.1 (``Site``, from
test_sources_preflight.py).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from test_sources_preflight import FLUX, Route, Site, flux

from airflow_provider_runcomfy.client._urlpolicy import CachingResolver, HostUnresolvable
from airflow_provider_runcomfy.sources import InputPreparer, InputUnreachableError, Preflight

#: A public address (example.com's): what the names below first resolve to.
PUBLIC = "93.184.216.34"


class Network:
    """DNS and routing as the worker sees them, on loopback: what no real server can fake offline.

    ``zone`` gives each name its answers in turn, the last one repeating (a rebinding DNS server
    answers a public address first, then 127.0.0.1 once the check has passed); ``queries`` counts
    the questions about each name. A connection to the public address is routed to the ``public``
    server (the real host), one to a name answered 127.0.0.1 to the ``internal`` server (the
    worker's own admin endpoint); nothing ever leaves the machine. Other names and addresses
    resolve and connect as usual.
    """

    def __init__(self, zone: dict[str, list[str]], public: Site, internal: Site) -> None:
        self.zone = zone
        self.routes = {PUBLIC: ("127.0.0.1", public.port), "127.0.0.1": ("127.0.0.1", internal.port)}
        self.queries: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._getaddrinfo = socket.getaddrinfo
        self._create_connection = socket.create_connection

    def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """DNS: a name of the zone gets its next answer."""
        if host not in self.zone:
            return self._getaddrinfo(host, port, *args, **kwargs)
        with self._lock:
            answers = self.zone[host]
            address = answers[min(self.queries[host], len(answers) - 1)]
            self.queries[host] += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    def create_connection(self, address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        """Routing: what httpx connects to (by name: resolved here, as the system would)."""
        host, port = address
        if host in self.zone:
            host = self.getaddrinfo(host, port)[0][4][0]
        if host in self.routes:
            return self._create_connection(self.routes[host], *args, **kwargs)
        return self._create_connection(address, *args, **kwargs)


@pytest.fixture(scope="module")
def tls_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site, Path]]:
    """Two https servers on 127.0.0.1 whose certificate is valid for the names below."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("rebind.example", "cdn.example").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    public, internal = Site(context), Site(context)
    yield public, internal, ca_file
    public.server.shutdown()
    internal.server.shutdown()


@pytest.fixture
def network(
    tls_sites: tuple[Site, Site, Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[Network, Site, Site]:
    """The ``Network`` stand-in, with the test CA trusted and no proxy in the way."""
    public, internal, ca_file = tls_sites
    for site in (public, internal):
        site.routes.clear()
        site.requests.clear()
        site.hosts.clear()
        site.connections = 0
    internal.routes["/in.png"] = Route(headers={"Content-Type": "image/png"}, body=b"admin")
    net = Network({"rebind.example": [PUBLIC, "127.0.0.1"], "cdn.example": [PUBLIC]}, public, internal)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", net.getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", net.create_connection)
    return net, public, internal


def test_a_dns_answer_that_changes_after_the_check_cannot_move_the_pre_flight_to_loopback(
    network: tuple[Network, Site, Site],
) -> None:
    """DNS rebinding: checked as public, then 127.0.0.1 -- the request goes where the check looked, or nowhere."""
    net, public, internal = network
    public.routes["/in.png"] = Route(headers={"Content-Type": "image/png", "Content-Length": "1234"})

    with Preflight(timeout=2.0) as preflight:  # RunComfy's own API: the strict URL rules
        result = preflight.check("image_url", "https://rebind.example/in.png", "image")

    assert internal.connections == 0 and internal.requests == []
    assert net.queries["rebind.example"] == 1  # asked once, for the check; the connection used its answer
    assert public.requests == [("HEAD", "/in.png", None)]
    assert public.hosts == ["rebind.example"]  # the name in Host (and TLS checked the name's certificate)
    assert (result.method, result.status, result.media_type, result.warning) == (
        "HEAD",
        200,
        "image/png",
        None,
    )

    # Once the answer is stale, the name is asked again: now loopback, and refused before connecting.
    with Preflight(mode="strict", timeout=2.0, dns_ttl=0) as preflight:
        with pytest.raises(InputUnreachableError, match=r"non-public address \(127\.0\.0\.1"):
            preflight.check("image_url", "https://rebind.example/in.png", "image")
    assert net.queries["rebind.example"] == 2
    assert internal.connections == 0 and internal.requests == []


def test_a_batch_on_one_host_resolves_it_once(network: tuple[Network, Site, Site]) -> None:
    net, public, _ = network
    items = 40
    for n in range(items):
        public.routes[f"/{n}.png"] = Route(headers={"Content-Type": "image/png", "Content-Length": "1234"})
    payloads = [flux(f"https://cdn.example/{n}.png") for n in range(items)]

    with InputPreparer(max_concurrency=8, mask=lambda _: None) as preparer:  # RunComfy's own API
        results = preparer.prepare_many(FLUX, payloads)

    assert [r.inputs[0].how for r in results if not isinstance(r, Exception)] == ["checked"] * items
    assert len(public.requests) == items
    assert net.queries["cdn.example"] == 1


def test_the_resolver_cache_keeps_answers_for_a_while_failures_briefly_and_few_hosts() -> None:
    asked: Counter[str] = Counter()
    now = [0.0]

    def resolver(host: str, port: int) -> list[str]:
        asked[host] += 1
        if host == "gone.example":
            raise HostUnresolvable("Name or service not known")
        return [PUBLIC]

    cache = CachingResolver(resolver, ttl=60, failure_ttl=10, max_entries=2, clock=lambda: now[0])
    assert cache("a.example", 443) == cache("A.example", 443) == [PUBLIC]
    for _ in range(2):
        with pytest.raises(HostUnresolvable, match="not known"):
            cache("gone.example", 443)
    assert (asked["a.example"], asked["gone.example"]) == (1, 1)

    now[0] = 11.0  # the failure is asked again, the answer is still fresh
    with pytest.raises(HostUnresolvable):
        cache("gone.example", 443)
    cache("a.example", 443)
    assert (asked["a.example"], asked["gone.example"]) == (1, 2)

    cache("b.example", 443)  # a third host: the least recently used (gone.example) is forgotten
    cache("a.example", 443)
    with pytest.raises(HostUnresolvable):
        cache("gone.example", 443)  # its failure would still be fresh, had it been kept
    assert (asked["a.example"], asked["gone.example"]) == (1, 3)
    now[0] = 61.0
    cache("a.example", 443)
    assert asked["a.example"] == 2
    assert cache.lookups == sum(asked.values())
