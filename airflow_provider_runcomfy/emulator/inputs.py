"""Getting a job's input images, the way RunComfy would, but offline.

RunComfy GETs each input URL. The emulator can never reach the internet,
so it reads what it can and makes up the rest deterministically:

| input URL | what the emulator does |
|---|---|
| ``data:`` URI | decodes it (PNG is decoded; other types get a stand-in picture) |
| its own ``/samples/...`` or ``/files/...`` URL | resolves it internally, without HTTP |
| another ``http(s)://`` URL on a loopback host | GETs it, with a short timeout |
| a host under ``.invalid`` (RFC 2606) | fails the job: "host not found" |
| any other ``http(s)://`` URL | draws a stand-in picture seeded by the URL |
| anything else | fails the job: unsupported URL |
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

import httpx

from airflow_provider_runcomfy.emulator.images import PNG_SIGNATURE, digest
from airflow_provider_runcomfy.emulator.jobs import InputPicture
from airflow_provider_runcomfy.emulator.loopback import is_loopback_name

#: Reads one of the emulator's own paths (``/samples/x.png``, ``/files/id/0.png``) without HTTP.
OwnPathReader = Callable[[str], Awaitable[bytes]]


class InputFetchError(Exception):
    """An input could not be read; the message becomes the failed job's error message."""


def _shorten(url: str) -> str:
    return url if len(url) <= 2048 else url[:2000] + "...(" + str(len(url)) + " chars)"


async def fetch_input(
    field: str,
    url: str,
    *,
    own_bases: Sequence[str],
    read_own_path: OwnPathReader,
    fetch_timeout: float,
    max_bytes: int,
) -> InputPicture:
    """Read the input ``url`` given in ``field``, or raise ``InputFetchError`` saying why not."""

    def failure(reason: str) -> InputFetchError:
        return InputFetchError(f"could not fetch {field} {_shorten(url)}: {reason}")

    if url.startswith("data:"):
        data = _decode_data_uri(url, max_bytes, failure)
        return _picture(data)
    for base in own_bases:
        if url.startswith(base + "/"):
            path = "/" + url[len(base) + 1 :].split("?", 1)[0]
            try:
                return InputPicture(png=await read_own_path(path))
            except LookupError as exc:
                raise failure(f"HTTP 404 ({exc})") from None
    parsed = urllib.parse.urlsplit(url)
    host = (parsed.hostname or "").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise failure("not an http(s) URL or data: URI")
    if host == "invalid" or host.endswith(".invalid"):
        raise failure("host not found")
    if is_loopback_name(host):
        return _picture(await _get(url, fetch_timeout, max_bytes, failure))
    # The internet is out of reach: stand in for the picture, the same one for the same URL.
    return InputPicture(stand_in_seed=digest("url", url).hex())


def _picture(data: bytes) -> InputPicture:
    if data.startswith(PNG_SIGNATURE):
        return InputPicture(png=data)
    # pypng reads only PNG; a JPEG or WebP input still "works", with a stand-in drawn from its bytes.
    return InputPicture(stand_in_seed=digest("bytes", data).hex())


def _decode_data_uri(url: str, max_bytes: int, failure: Callable[[str], InputFetchError]) -> bytes:
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise failure("malformed data: URI (no comma)")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise failure(f"larger than {max_bytes} bytes")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(urllib.parse.unquote(payload), validate=True)
        except (binascii.Error, ValueError):
            raise failure("malformed data: URI (invalid base64)") from None
    return urllib.parse.unquote_to_bytes(payload)


async def _get(
    url: str, fetch_timeout: float, max_bytes: int, failure: Callable[[str], InputFetchError]
) -> bytes:
    """GET a loopback URL asynchronously, with a deadline and a size cap.

    Redirects are not followed (one could lead off the machine) and proxies from the environment
    are ignored: the emulator must never reach the internet.
    """
    try:
        async with (
            httpx.AsyncClient(timeout=fetch_timeout, follow_redirects=False, trust_env=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 300:
                raise failure(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise failure(f"larger than {max_bytes} bytes")
            return bytes(body)
    except httpx.TimeoutException:
        raise failure(f"no answer within {fetch_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise failure(f"{type(exc).__name__}: {exc}") from None
