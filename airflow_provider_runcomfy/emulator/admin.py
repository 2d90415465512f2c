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
from airflow_provider_runcomfy.emulator.state import EmulatorState, Planned

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


#: What a route does with the state, the request's JSON body and its path and query parameters;
#: it returns the JSON answer.
Call = Callable[[EmulatorState, dict[str, Any], dict[str, str]], Any]
Route = tuple[str, str, Call]

#: Where the admin API keeps each kind of plan.
PLAN_PATHS: dict[type[Fault] | type[Rule], str] = {Fault: "/faults", Rule: "/rules"}


def _answering(answer: Any, command: Callable[[EmulatorState], object]) -> Call:
    """A route for a command that returns nothing: run it, then answer ``answer``."""

    def call(state: EmulatorState, body: dict[str, Any], params: dict[str, str]) -> Any:
        command(state)
        return answer

    return call


def _plan_routes(kind: type[Planned]) -> tuple[Route, ...]:
    """List, add (the body is the ``Fault`` or ``Rule`` as JSON) and clear the faults or the rules."""
    path = PLAN_PATHS[kind]
    return (
        (path, "GET", lambda state, body, params: [p.model_dump() for p in state.planned(kind)]),
        (path, "POST", lambda state, body, params: state.add(kind.model_validate(body)).model_dump()),
        (path, "DELETE", _answering([], lambda state: state.clear(kind))),
    )


def _job(state: EmulatorState, body: dict[str, Any], params: dict[str, str]) -> Any:
    job = state.job(params["request_id"])
    return job.to_dict() if job else None


def _journal(state: EmulatorState, body: dict[str, Any], params: dict[str, str]) -> Any:
    entries = state.journal.of(params.get("endpoint"))
    return [_without_token(entry.to_dict(), state.config) for entry in entries]


#: The admin API: (path under /_emulator, method, what it does); each is one call on the state.
ROUTES: tuple[Route, ...] = (
    ("/health", "GET", lambda state, body, params: {"status": "ok"}),
    ("/config", "GET", lambda state, body, params: state.get_config()),
    ("/config", "POST", lambda state, body, params: state.set_config(body)),
    ("/reset", "POST", _answering({"reset": True}, lambda state: state.reset())),
    *_plan_routes(Fault),
    *_plan_routes(Rule),
    ("/jobs", "GET", lambda state, body, params: [job.to_dict() for job in state.list_jobs()]),
    (
        "/jobs/release",
        "POST",
        lambda state, body, params: {"released": state.release(body.get("request_id"))},
    ),
    ("/jobs/{request_id}", "GET", _job),
    (
        "/jobs/{request_id}/expire",
        "POST",
        lambda state, body, params: {"expired": state.expire(params["request_id"])},
    ),
    ("/journal", "GET", _journal),
    ("/journal", "DELETE", _answering([], lambda state: state.journal.clear())),
)


def add_admin_routes(app: FastAPI, state: EmulatorState) -> None:
    """Serve ``ROUTES`` under ``/_emulator``: checked, never journaled, errors as 400/403 JSON."""

    def route(call: Call) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                check_admin_request(request, state.config)
            except AdminRefused as exc:
                return JSONResponse({"detail": str(exc)}, status_code=403)
            try:
                body = await _json_object(request) if request.method == "POST" else {}
                result = call(state, body, {**request.query_params, **request.path_params})
            except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError too
                return JSONResponse({"detail": str(exc)}, status_code=400)
            return JSONResponse(result)

        return endpoint

    for path, method, call in ROUTES:
        app.add_api_route(ADMIN_PREFIX + path, route(call), methods=[method], include_in_schema=False)
