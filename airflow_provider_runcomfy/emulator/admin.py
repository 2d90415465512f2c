"""``/_emulator/...``: the controls over HTTP, for a ``RemoteEmulator`` in another process.

Every route is one call on ``EmulatorState`` with the same declarative
models the in-process controls use (``Fault``, ``Rule``, config changes).

Safe on a shared host: a web page in a browser on the same machine must
not be able to steer the emulator (rotate its token, point outputs at
another host, read job inputs that hold pre-signed URLs). So every admin
request needs

- a loopback ``Host`` (``127.0.0.1``, ``[::1]``, ``localhost``): a DNS
  rebinding page reaches 127.0.0.1 under its own host name;
- no ``Origin``, or a loopback one: a browser names the page's origin;
- ``Content-Type: application/json`` on every POST (a browser cannot send
  it cross-origin without a CORS preflight, which the emulator never grants);
- the admin token in ``X-Emulator-Admin-Token`` when one is configured
  (``admin_token``; it also lets a non-loopback ``Host`` through, for an
  emulator deliberately served beyond loopback with ``--allow-remote``).
"""

from __future__ import annotations

import hmac
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.faults import Fault, Rule
from airflow_provider_runcomfy.emulator.loopback import is_loopback_name
from airflow_provider_runcomfy.emulator.state import EmulatorState

ADMIN_PREFIX = "/_emulator"
ADMIN_TOKEN_HEADER = "x-emulator-admin-token"
#: Admin bodies are small JSON; a 10 MB error message for an ``http`` fault still fits.
MAX_ADMIN_BODY = 64 * 1024 * 1024


class AdminRefused(Exception):
    """The admin request fails a safety check; the message says which and what to do."""


def _host_of(authority: str) -> str:
    return urllib.parse.urlsplit("//" + authority).hostname or ""


def check_admin_request(request: Request, config: EmulatorConfig) -> None:
    """Raise ``AdminRefused`` unless ``request`` may use the admin API (see the module docstring)."""
    token_ok = False
    if config.admin_token is not None:
        given = request.headers.get(ADMIN_TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), config.admin_token.encode()):
            raise AdminRefused(f"the admin API needs the admin token in the {ADMIN_TOKEN_HEADER} header")
        token_ok = True
    if not token_ok and not is_loopback_name(_host_of(request.headers.get("host", ""))):
        raise AdminRefused(
            "the admin API answers only requests addressed to a loopback host "
            "(http://127.0.0.1:<port>), or ones that carry the admin token"
        )
    origin = request.headers.get("origin")
    if origin is not None and not is_loopback_name(urllib.parse.urlsplit(origin).hostname or ""):
        raise AdminRefused("the admin API does not answer web pages of other origins")
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise AdminRefused("admin POST requests need 'Content-Type: application/json' (a JSON object)")


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_ADMIN_BODY:
        raise ValueError(f"the body is larger than {MAX_ADMIN_BODY} bytes")
    data = json.loads(raw) if raw else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _without_token(entry: dict[str, Any], config: EmulatorConfig) -> dict[str, Any]:
    """A journal entry for the admin API, which must not reveal a token.

    The ``authorization`` header says whose token was sent instead:
    ``Bearer <token>``, ``Bearer <extra token 0>`` or ``Bearer <unknown token>``.
    """
    headers = entry["headers"]
    if "authorization" in headers:
        scheme, _, token = headers["authorization"].partition(" ")
        if token == config.token:
            who = "<token>"
        elif token in config.extra_tokens:
            who = f"<extra token {config.extra_tokens.index(token)}>"
        else:
            who = "<unknown token>"
        headers["authorization"] = f"{scheme} {who}"
    headers.pop(ADMIN_TOKEN_HEADER, None)
    return entry


Handler = Callable[[EmulatorState, Request], Awaitable[Any]]


async def _health(state: EmulatorState, request: Request) -> Any:
    return {"status": "ok"}


async def _get_config(state: EmulatorState, request: Request) -> Any:
    return state.get_config()


async def _set_config(state: EmulatorState, request: Request) -> Any:
    return state.set_config(await _json_object(request))


async def _reset(state: EmulatorState, request: Request) -> Any:
    state.reset()
    return {"reset": True}


async def _add_fault(state: EmulatorState, request: Request) -> Any:
    return state.add_fault(Fault.model_validate(await _json_object(request))).model_dump()


async def _list_faults(state: EmulatorState, request: Request) -> Any:
    return [f.model_dump() for f in state.list_faults()]


async def _clear_faults(state: EmulatorState, request: Request) -> Any:
    state.clear_faults()
    return []


async def _add_rule(state: EmulatorState, request: Request) -> Any:
    return state.add_rule(Rule.model_validate(await _json_object(request))).model_dump()


async def _list_rules(state: EmulatorState, request: Request) -> Any:
    return [r.model_dump() for r in state.list_rules()]


async def _clear_rules(state: EmulatorState, request: Request) -> Any:
    state.clear_rules()
    return []


async def _list_jobs(state: EmulatorState, request: Request) -> Any:
    return [j.to_dict() for j in state.list_jobs()]


async def _get_job(state: EmulatorState, request: Request) -> Any:
    job = state.job(request.path_params["request_id"])
    return job.to_dict() if job else None


async def _expire(state: EmulatorState, request: Request) -> Any:
    return {"expired": state.expire(request.path_params["request_id"])}


async def _journal(state: EmulatorState, request: Request) -> Any:
    endpoint = request.query_params.get("endpoint")
    return [_without_token(e.to_dict(), state.config) for e in state.journal.of(endpoint)]


async def _clear_journal(state: EmulatorState, request: Request) -> Any:
    state.journal.clear()
    return []


#: The admin API: (path under /_emulator, method, handler).
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("/health", "GET", _health),
    ("/config", "GET", _get_config),
    ("/config", "POST", _set_config),
    ("/reset", "POST", _reset),
    ("/faults", "GET", _list_faults),
    ("/faults", "POST", _add_fault),
    ("/faults", "DELETE", _clear_faults),
    ("/rules", "GET", _list_rules),
    ("/rules", "POST", _add_rule),
    ("/rules", "DELETE", _clear_rules),
    ("/jobs", "GET", _list_jobs),
    ("/jobs/{request_id}", "GET", _get_job),
    ("/jobs/{request_id}/expire", "POST", _expire),
    ("/journal", "GET", _journal),
    ("/journal", "DELETE", _clear_journal),
)


def add_admin_routes(app: FastAPI, state: EmulatorState) -> None:
    """Serve ``ROUTES`` under ``/_emulator``: checked, never journaled, errors as 400/403 JSON."""

    def route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                check_admin_request(request, state.config)
            except AdminRefused as exc:
                return JSONResponse({"detail": str(exc)}, status_code=403)
            try:
                result = await handler(state, request)
            except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError too
                return JSONResponse({"detail": str(exc)}, status_code=400)
            return JSONResponse(result)

        return endpoint

    for path, method, handler in ROUTES:
        app.add_api_route(ADMIN_PREFIX + path, route(handler), methods=[method], include_in_schema=False)
