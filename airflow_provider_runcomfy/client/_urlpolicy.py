"""Which URLs the provider fetches by itself (outputs, input pre-flights), and where it connects.

The rules, for every URL and every redirect:

- ``https://`` only; ``http://`` only to the API's own loopback host and port, while the API
  base URL is on loopback (the emulator, whose files are served over plain http);
- a URL that does not parse is refused with ``URLMalformed`` (never a bare ``ValueError``);
- no credentials in the URL (httpx would send them as an ``Authorization`` header);
- never from ``https://`` to ``http://`` on a redirect;
- for ``https://``, the host is resolved and every address must be public: loopback,
  private, link-local, reserved, multicast and unspecified addresses are refused (an output
  URL must not make a worker call its own admin endpoints or a cloud metadata service). An
  IPv6 address that embeds an IPv4 one (IPv4-mapped and -compatible, 6to4, NAT64, Teredo) is
  judged by the IPv4 address it leads to. A loopback API base URL (the emulator, an egress
  sidecar) exempts only its own host and port: ``https://169.254.169.254/`` stays refused;
- the connection then goes to an address that was checked (the URL's host stays in the
  ``Host`` header and TLS's SNI and certificate check), so a DNS answer that changes
  between the check and the connection (DNS rebinding) cannot move it elsewhere.

``check_fetch_url`` says whether a URL may be fetched; ``Opener`` fetches under the rules;
``CachingResolver`` spares a batch one DNS lookup per URL when its URLs share a host.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx

from airflow_provider_runcomfy.client._limits import truncate
from airflow_provider_runcomfy.client._media import shown_url
from airflow_provider_runcomfy.client._validation import is_loopback_host
from airflow_provider_runcomfy.client.closing import close_all
from airflow_provider_runcomfy.client.errors import (
    MalformedURLError,
    OutputDownloadError,
    OutputTransferError,
    OutputURLRejectedError,
)
from airflow_provider_runcomfy.client.redact import redact_url

#: Resolves ``(host, port)`` to IP address strings (``socket.getaddrinfo`` by default).
Resolver = Callable[[str, int], Sequence[str]]

#: Where ``check`` puts the addresses it checked, for the transport to connect to.
ADDRESSES = "runcomfy_addresses"

#: Redirects followed for one URL.
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class URLRefused(Exception):
    """The URL breaks a rule; ``problem`` says which, as a sentence fragment."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class URLMalformed(URLRefused):
    """The URL does not parse (an unclosed ``[``, a port that is not a number...)."""


class HostUnresolvable(Exception):
    """The URL's host has no address (it does not exist, or DNS failed)."""


def resolve(host: str, port: int) -> list[str]:
    """The IP addresses of ``host``, in the resolver's order, each once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as error:
        raise HostUnresolvable(str(error)) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CachingResolver:
    """A resolver that remembers each answer for ``ttl`` seconds: one lookup per host, not per URL.

    For many checks on few hosts (a batch's input pre-flight: 10,000 images on one bucket
    would otherwise be 10,000 lookups). It cannot be rebound: the connection goes to the
    addresses the policy checked (``PinnedTransport``), so an answer is at worst ``ttl``
    seconds old, never swapped between the check and the connection. A failed lookup is
    remembered for ``failure_ttl`` seconds (a host that does not resolve costs one timeout,
    not one per URL). Thread-safe: threads asking for the same host at once share one lookup.

    :param resolver: the resolver asked on a miss.
    :param ttl: seconds an answer is kept.
    :param failure_ttl: seconds a ``HostUnresolvable`` is kept.
    :param max_entries: hosts remembered at most (the least recently used is forgotten first).
    :param clock: seconds, monotonic (tests).
    """

    def __init__(
        self,
        resolver: Resolver = resolve,
        *,
        ttl: float = 60.0,
        failure_ttl: float = 10.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = resolver
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max(1, max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        # (host, port) -> (expiry, addresses or the failure's text)
        self._entries: OrderedDict[tuple[str, int], tuple[float, tuple[str, ...] | HostUnresolvable]] = (
            OrderedDict()
        )
        self._pending: dict[tuple[str, int], threading.Lock] = {}
        #: How many times ``resolver`` was asked (for tests and measurements).
        self.lookups = 0

    def __call__(self, host: str, port: int) -> list[str]:
        key = (host.lower(), port)
        found = self._cached(key)
        if found is None:
            with self._lock:
                pending = self._pending.setdefault(key, threading.Lock())
            with pending:  # one lookup per host at a time; the others then find its answer
                found = self._cached(key)
                if found is None:
                    found = self._lookup(host, port, key)
            with self._lock:
                if self._pending.get(key) is pending:
                    del self._pending[key]
        if isinstance(found, HostUnresolvable):
            raise HostUnresolvable(str(found))
        return list(found)

    def _cached(self, key: tuple[str, int]) -> tuple[str, ...] | HostUnresolvable | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def _lookup(self, host: str, port: int, key: tuple[str, int]) -> tuple[str, ...] | HostUnresolvable:
        with self._lock:
            self.lookups += 1
        answer: tuple[str, ...] | HostUnresolvable
        try:
            answer, ttl = tuple(self._resolver(host, port)), self._ttl
        except HostUnresolvable as error:
            answer, ttl = error, self._failure_ttl
        with self._lock:
            self._entries[key] = (self._clock() + ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return answer


#: NAT64's well-known prefix (RFC 6052): the IPv4 address is the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: NAT64's local-use prefix (RFC 8215): where the IPv4 address sits depends on a prefix length
#: only the local network knows, so it cannot be judged -- and it is local by definition.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
#: IPv4-compatible addresses (``::a.b.c.d``, deprecated but still parsed by some stacks).
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped and -compatible, 6to4, NAT64, Teredo.

    Teredo gives two (its server and the client, whose obfuscated bits are undone here).
    """
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a public unicast address (not loopback, private, link-local...).

    An IPv6 address that embeds an IPv4 address is judged by that address (every one, for
    Teredo): ``2002:7f00:1::`` is 127.0.0.1 reached through 6to4. Something that is not an
    address at all is not public.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = embedded_ipv4(ip)
        if embedded:
            return all(_is_public(v4) for v4 in embedded)
    return _is_public(ip)


def _origin(host: str, port: int | None, scheme: str) -> tuple[str, int]:
    """``(host, port)`` as compared for the API's own origin: case, brackets and a final dot aside."""
    return host.strip("[]").lower().rstrip("."), port or (443 if scheme == "https" else 80)


def _split(url: str) -> tuple[str, str | None, int | None, SplitResult]:
    """Scheme, host and port of ``url``, or ``URLMalformed`` (never a bare ``ValueError``)."""
    try:
        parts = urlsplit(str(url))
        return parts.scheme.lower(), parts.hostname, parts.port, parts
    except ValueError as error:
        raise URLMalformed(f"it is not a well-formed URL ({truncate(error, 80)})") from None


@dataclass(frozen=True)
class UrlPolicy:
    """The rules above, for one API base URL.

    :param api_base_url: the RunComfy API's base URL; None means RunComfy's own (the strict rules).
    :param resolver: how host names are resolved (tests of hosts that do not exist offline).
    """

    api_base_url: str | None = None
    resolver: Resolver = resolve

    @property
    def local(self) -> bool:
        """Whether the API is on loopback (the emulator): its own host and port are then trusted."""
        return self.own_origin is not None

    @property
    def own_origin(self) -> tuple[str, int] | None:
        """``(host, port)`` of a loopback API base URL, the one origin exempt from the checks; else None."""
        if not self.api_base_url:
            return None
        try:
            scheme, host, port, _ = _split(str(self.api_base_url))
        except URLMalformed:
            return None
        if not is_loopback_host(host):
            return None
        return _origin(host or "", port, scheme)

    def check(self, url: str, previous: str | None = None) -> list[str]:
        """The addresses ``url`` may be fetched from (empty: connect by name), or ``URLRefused``.

        :param previous: the URL that redirected here, if any.
        :raises URLMalformed: ``url`` (or ``previous``) does not parse; a ``URLRefused``.
        """
        scheme, host, port, parts = _split(url)
        if scheme not in ("https", "http") or not host:
            raise URLRefused("only https:// URLs are fetched")
        if parts.username or parts.password:
            raise URLRefused("it carries credentials, which would be sent as an Authorization header")
        if previous is not None and _split(previous)[0] == "https" and scheme == "http":
            raise URLRefused("a redirect from https:// to plain http:// is never followed")
        own = self.own_origin is not None and _origin(host, port, scheme) == self.own_origin
        if scheme == "http":
            if not own:
                raise URLRefused(
                    "plain http:// is fetched only from the API's own loopback host and port (the "
                    "emulator); RunComfy's URLs are https://"
                )
            return []
        if own:
            return []
        addresses = self.resolver(host, port or 443)
        if not addresses:
            raise HostUnresolvable("no address")
        private = [address for address in addresses if not is_public_address(address)]
        if private:
            raise URLRefused(
                f"its host resolves to a non-public address ({_described(private[0])}: loopback, "
                "private or link-local), which is never fetched"
            )
        return list(addresses)


def _described(address: str) -> str:
    """An address as refused, with the IPv4 address it leads to when it embeds one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return truncate(address, 80)
    embedded = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    return f"{address}, which leads to {' and '.join(map(str, embedded))}" if embedded else address


class PinnedTransport(httpx.BaseTransport):
    """Connects to the addresses ``UrlPolicy.check`` approved, keeping the host name for TLS.

    A request without checked addresses (plain http to loopback, the emulator) goes as it is.
    Addresses are tried in order on a connection failure, as a resolver's list would be.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        addresses = request.extensions.get(ADDRESSES) or []
        if not addresses:
            return self._inner.handle_request(request)
        last: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # keeps Host: the URL's own host
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": request.url.host},
            )
            try:
                return self._inner.handle_request(pinned)
            except httpx.ConnectError as error:
                last = error
        assert last is not None
        raise last

    def close(self) -> None:
        self._inner.close()


def check_fetch_url(
    url: str, *, api_base_url: str | None, resolver: Resolver | None = None, what: str = "the file"
) -> str:
    """Return ``url`` if the provider may fetch it, else raise ``OutputURLRejectedError``.

    The policy of ``_urlpolicy`` (https only; http only to loopback while the API is on
    loopback; no credentials; public addresses only unless the API is on loopback), for any
    URL the provider fetches by itself: outputs, and input URLs it checks before a submit.
    A host that does not resolve raises ``OutputTransferError`` (DNS may come back).

    :param api_base_url: the RunComfy API's base URL (``client.base_url``); None: RunComfy's own.
    :param what: what the URL is, for the message ("the output", "image_urls[0]").
    """
    policy = UrlPolicy(api_base_url, resolver or resolve)
    checked(policy, str(url), None, what)
    return str(url)


def check_output_url(url: str, *, api_base_url: str | None = None) -> str:
    """``check_fetch_url`` for an output URL."""
    return check_fetch_url(url, api_base_url=api_base_url, what="the output")


def checked(policy: UrlPolicy, url: str, previous: str | None, what: str) -> list[str]:
    """``policy.check``, its refusals as the user's errors (``OutputURLRejectedError``...)."""
    try:
        return policy.check(url, previous)
    except URLMalformed as malformed:
        raise MalformedURLError(f"Refusing to fetch {what} {_shown(url)}: {malformed.problem}.") from None
    except URLRefused as refused:
        raise OutputURLRejectedError(f"Refusing to fetch {what} {_shown(url)}: {refused.problem}.") from None
    except HostUnresolvable as error:
        raise OutputTransferError(
            f"The host of {what} {_shown(url)} could not be resolved ({truncate(error, 200)})."
        ) from None


def _shown(url: str) -> str:
    """``shown_url``, or for a URL that does not parse, its redacted start."""
    try:
        return shown_url(url)
    except ValueError:
        return truncate(redact_url(str(url)), 120)


class Opener:
    """Opens URLs under a policy: each hop checked, the connection pinned, redirects followed here.

    :param headers: sent with every request (never an ``Authorization``: none is ever set).
    :param transport: a caller's transport (tests): used as it is, without pinning.
    :param limits: the connection pool's limits (httpx's defaults when None).

    Thread-safe: several threads may ``open`` at once (a batch's pre-flight); they share the
    connection pools, each created once.
    """

    def __init__(
        self,
        policy: UrlPolicy,
        timeout: httpx.Timeout,
        headers: dict[str, str],
        transport: httpx.BaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.policy = policy
        self._timeout = timeout.as_dict()
        self._headers = headers
        self._given = transport
        self._limits = limits
        self._transports: dict[str | None, httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connections."""
        close_all(self._lock, self._transports)

    @contextmanager
    def open(
        self,
        url: str,
        method: str,
        what: str,
        check_time: Callable[[], None],
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[tuple[str, httpx.Response]]:
        """The answer to ``url`` (and the URL that gave it), redirects followed -- each checked like the first.

        :param check_time: called before each hop; raises when the caller's deadline has passed.
        :param headers: added to the opener's own for this request (and its redirects).
        """
        sent = {**self._headers, **(headers or {})}
        current, previous = url, None
        for _ in range(MAX_REDIRECTS + 1):
            check_time()
            addresses = checked(self.policy, current, previous, what)
            try:
                request = httpx.Request(
                    method,
                    current,
                    headers=sent,
                    extensions={"timeout": self._timeout, ADDRESSES: addresses},
                )
            except httpx.InvalidURL:  # parsed by urlsplit, yet not by httpx: still the policy's error
                raise MalformedURLError(
                    f"Refusing to fetch {what} {_shown(current)}: it is not a well-formed URL."
                ) from None
            response = self._transport(current).handle_request(request)
            response.request = request
            location = response.headers.get("location")
            if response.status_code not in REDIRECTS or not location:
                try:
                    yield current, response
                finally:
                    response.close()
                return
            response.close()
            previous, current = current, redirect_target(url, current, location, what)
        raise too_many_redirects(url, what)

    def _transport(self, url: str) -> httpx.BaseTransport:
        if self._given is not None:
            return self._given
        proxy = proxy_for(url)
        with self._lock:  # two threads must not each build (and one leak) a pool for one proxy
            transport = self._transports.get(proxy)
            if transport is None:
                # Behind a proxy the proxy connects (and resolves): the policy still checks the URL
                # and its addresses here, but the connection cannot be pinned to them.
                transport = self._http(proxy) if proxy else PinnedTransport(self._http(None))
                self._transports[proxy] = transport
        return transport

    def _http(self, proxy: str | None) -> httpx.HTTPTransport:
        if self._limits is None:  # httpx's own defaults
            return httpx.HTTPTransport(proxy=proxy)
        return httpx.HTTPTransport(proxy=proxy, limits=self._limits)


def redirect_target(url: str, current: str, location: str, what: str) -> str:
    """Where a redirect from ``current`` (asked for as ``url``) leads; ``MalformedURLError`` if nowhere sane.

    Judged as sent: httpx and aiohttp would re-encode what does not parse. The target still has
    to pass the policy, as the first URL did.
    """
    try:
        _split(location)
        return str(httpx.URL(current).join(location))
    except (URLMalformed, httpx.InvalidURL):
        raise MalformedURLError(f"{what} {_shown(url)} redirected to a malformed URL.") from None


def too_many_redirects(url: str, what: str) -> OutputDownloadError:
    return OutputDownloadError(
        f"{what.capitalize()} {shown_url(url)} redirected more than {MAX_REDIRECTS} times; it was not fetched."
    )


def proxy_for(url: str, proxies: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``NO_PROXY``...), as httpx reads it.

    :param proxies: ``urllib.request.getproxies()`` as read before (it walks the whole environment:
        5% of a batch worker's interpreter time when read for each of its copies); None: read now.
    """
    proxies = urllib.request.getproxies() if proxies is None else proxies
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy
