"""The HTTP face of the emulator: RunComfy's Model API, output files, samples and the admin API.

Every API and file request takes one path, ``_Api._serve``: record it in the
journal, apply a planned fault if one matches, run the handler, and note
the status answered. Handlers raise ``ApiError`` for RunComfy's documented
errors; ``_serve`` turns it into the JSON body RunComfy sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from airflow_provider_runcomfy.client._validation import REQUEST_ID_PATTERN
from airflow_provider_runcomfy.emulator import scenes
from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.images import padded_png
from airflow_provider_runcomfy.emulator.inputs import InputFetchError, fetch_input
from airflow_provider_runcomfy.emulator.models import (
    InputSchemaError,
    image_url_fields,
    is_valid_model_id,
    spec_for,
    validate_input,
)
from airflow_provider_runcomfy.emulator.render import OutputSpec, render_output
from airflow_provider_runcomfy.emulator.state import (
    EmulatorState,
    Fault,
    InsufficientBalance,
    Job,
    JournalEntry,
    Phase,
)

log = logging.getLogger(__name__)

_CONNECTION_KEY = "runcomfy_emulator.connection"
_SAMPLE_PATH = re.compile(r"/samples/([a-z]+)\.png")
_FILE_PATH = re.compile(r"/files/([A-Za-z0-9_-]{1,128})/(\d+)\.png")

#: ``/status`` words for each phase; a failed job's word is the config's ``failed_status_word``.
_STATUS_WORDS: dict[Phase, str] = {
    "in_queue": "in_queue",
    "in_progress": "in_progress",
    "succeeded": "completed",
    "cancelled": "cancelled",
}


class ApiError(Exception):
    """One of RunComfy's documented errors: an HTTP status and a JSON body with ``error_code``."""

    def __init__(self, http_status: int, error_code: int, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.message = message
        self.detail = detail

    def response(self) -> JSONResponse:
        """The answer RunComfy gives for this error."""
        body: dict[str, Any] = {"error_code": self.error_code, "error_message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return JSONResponse(body, status_code=self.http_status)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _RawConnection:
    """The TCP connection under one request, so a fault can cut it without an HTTP answer.

    ASGI has no message for "close without responding". Under uvicorn the
    ``send`` callable is a bound method of the per-request cycle object,
    which holds the asyncio transport (``send.__self__.transport``) and a
    ``disconnected`` flag. Closing that transport is exactly what a dropped
    connection is; once uvicorn sees the connection lost it stops trying to
    answer (no 500 is sent). Under other servers (e.g. httpx's
    ``ASGITransport``) there is no transport: the request then fails with an
    exception, which a client sees as a transport error too.
    """

    def __init__(self, send: Send) -> None:
        cycle = getattr(send, "__self__", None)
        self._cycle = cycle if hasattr(cycle, "transport") and hasattr(cycle, "disconnected") else None

    async def close(self) -> None:
        """Close the connection after flushing what was sent, and wait until the server notices."""
        if self._cycle is None:
            raise ConnectionAbortedError("emulated fault: connection closed without a complete answer")
        self._cycle.transport.close()
        for _ in range(200):  # connection_lost runs on a later loop iteration: at most ~1 s here
            if self._cycle.disconnected:
                return
            await asyncio.sleep(0.005)


class _DroppedConnection(Response):
    """A "response" that closes the connection without sending anything."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope[_CONNECTION_KEY].close()


class _TruncatedResponse(Response):
    """Sends ``inner``'s status and headers (full ``Content-Length``), ``after_bytes`` bytes, then cuts."""

    def __init__(self, inner: Response, after_bytes: int) -> None:
        super().__init__(status_code=inner.status_code)
        self.raw_headers = inner.raw_headers
        self._inner = inner
        self._after_bytes = after_bytes

    async def _body(self) -> AsyncIterator[bytes]:
        if isinstance(self._inner, StreamingResponse):
            async for chunk in self._inner.body_iterator:
                yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        else:
            yield bytes(self._inner.body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        remaining = self._after_bytes
        async for chunk in self._body():
            if remaining <= 0:
                break
            part = chunk[:remaining]
            remaining -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await scope[_CONNECTION_KEY].close()


class EmulatorApp(FastAPI):
    """The emulator's FastAPI application; ``app.state.emulator`` is its ``EmulatorState``.

    It differs from a plain ``FastAPI`` only in keeping a handle on each
    request's connection (see ``_RawConnection``), which must be taken from
    the server's own ``send`` before any middleware wraps it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_CONNECTION_KEY] = _RawConnection(send)
        await super().__call__(scope, receive, send)


def create_app(
    config: EmulatorConfig | None = None, *, state: EmulatorState | None = None, **overrides: Any
) -> EmulatorApp:
    """Build the emulator's ASGI app, for uvicorn or any ASGI server.

    :param config: the settings (default ``EmulatorConfig()``), updated by ``overrides``.
    :param state: an existing ``EmulatorState`` to serve (``config`` and ``overrides`` are then ignored);
        ``RunComfyEmulator`` passes its own so that its controls and the server share one memory.

    ``uvicorn --factory airflow_provider_runcomfy.emulator.app:create_app`` serves the defaults.
    """
    if state is None:
        state = EmulatorState((config or EmulatorConfig()).updated(**overrides))
    app = EmulatorApp(title="RunComfy Model API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state
    api = _Api(state)
    routes: list[tuple[str, Callable[..., Awaitable[Response]], str]] = [
        ("/v1/models/{model_id:path}", api.submit, "POST"),
        ("/v1/models/{model_id:path}", api.model_info, "GET"),
        ("/v1/requests/{request_id}/status", api.status, "GET"),
        ("/v1/requests/{request_id}/result", api.result, "GET"),
        ("/v1/requests/{request_id}/cancel", api.cancel, "POST"),
        ("/files/{request_id}/{index:int}.png", api.file, "GET"),
        ("/samples", api.sample_list, "GET"),
        ("/samples/", api.sample_list, "GET"),
        ("/samples/{name}.png", api.sample, "GET"),
    ]
    for path, endpoint, method in routes:
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
    _add_admin_routes(app, state)
    return app


class _Api:
    """The handlers of RunComfy's endpoints, the output files and the samples."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # -- the one path every request takes -------------------------------------------------------

    async def _serve(
        self,
        request: Request,
        endpoint: str,
        handle: Callable[[JournalEntry], Awaitable[Response]],
        *,
        request_id: str | None = None,
        model_id: str | None = None,
        body: Any = None,
    ) -> Response:
        entry = self.state.journal.record(
            JournalEntry(
                endpoint=endpoint,
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                headers=dict(request.headers),
                json=body,
                status_code=None,
                request_id=request_id,
                at=time.time(),
                model_id=model_id,
            )
        )
        fault = self.state.take_fault(endpoint, request_id) if endpoint != "sample" else None
        if fault is None:
            return await self._run(handle, entry)
        entry.fault = fault.kind
        # Side effects first for submit/cancel: the fault loses the answer, not what the call did.
        acts_first = endpoint in ("submit", "cancel")
        if fault.kind == "http":
            response = self._http_fault(fault)
        elif fault.kind == "error_200":
            response = JSONResponse(
                {"error_code": fault.error_code, "error_message": fault.error_message or "emulated error"}
            )
        elif fault.kind == "delay":
            assert fault.seconds is not None
            if acts_first:
                response = await self._run(handle, entry)
                await asyncio.sleep(fault.seconds)
                return response
            await asyncio.sleep(fault.seconds)
            return await self._run(handle, entry)
        elif fault.kind == "drop":
            await self._run(handle, entry)
            entry.status_code = None
            return _DroppedConnection()
        else:  # truncate
            return _TruncatedResponse(await self._run(handle, entry), fault.after_bytes or 0)
        entry.status_code = response.status_code
        return response

    @staticmethod
    async def _run(handle: Callable[[JournalEntry], Awaitable[Response]], entry: JournalEntry) -> Response:
        try:
            response = await handle(entry)
        except ApiError as exc:
            response = exc.response()
        entry.status_code = response.status_code
        return response

    @staticmethod
    def _http_fault(fault: Fault) -> Response:
        assert fault.status is not None
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        if fault.error_code is None:
            return Response(status_code=fault.status, headers=headers)
        message = fault.error_message or f"emulated HTTP {fault.status}"
        return JSONResponse(
            {"error_code": fault.error_code, "error_message": message},
            status_code=fault.status,
            headers=headers,
        )

    # -- shared checks ----------------------------------------------------------------------------

    def _token(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or token not in self.state.config.valid_tokens:
            raise ApiError(
                401,
                400004,
                "Invalid or missing API token: send 'Authorization: Bearer <token>' with a valid token",
            )
        return token

    def _job(self, request: Request, request_id: str) -> Job:
        token = self._token(request)
        job = self.state.get(request_id) if REQUEST_ID_PATTERN.fullmatch(request_id) else None
        if job is None:
            raise ApiError(404, 404001, f"Request {request_id} not found or expired")
        if job.owner != token:
            raise ApiError(403, 403001, f"Request {request_id} belongs to another user")
        return job

    def _check_model(self, model_id: str) -> None:
        if not is_valid_model_id(model_id) or model_id in self.state.config.unknown_models:
            raise ApiError(400, 400001, f"Invalid model_id: {model_id!r} is not a RunComfy model")

    def _base(self, request: Request) -> str:
        return self.state.config.public_url or str(request.base_url).rstrip("/")

    def _urls(self, request: Request, request_id: str, *names: str) -> dict[str, str]:
        base = f"{self._base(request)}/v1/requests/{request_id}"
        return {f"{name}_url": f"{base}/{name}" for name in names}

    # -- jobs: inputs, outcome, outputs ------------------------------------------------------------

    async def _settle(self, job: Job) -> Phase:
        """The job's phase, fetching its inputs first if it has finished and its outcome hangs on them."""
        phase = job.phase(self.state.clock())
        if phase in ("succeeded", "failed") and job.failure is None and job.inputs is None:
            task = job.inputs_task
            if task is None or task.get_loop() is not asyncio.get_running_loop():
                task = job.inputs_task = asyncio.ensure_future(self._fetch_inputs(job))
            await asyncio.shield(task)  # a client hanging up must not cancel the fetch
            phase = job.phase(self.state.clock())
        return phase

    async def _fetch_inputs(self, job: Job) -> None:
        """Read every input image now (RunComfy would, when the job runs); a failure fails the job."""
        config = self.state.config
        pictures = []
        try:
            for field, url in job.plan.image_urls:
                pictures.append(
                    await fetch_input(
                        field,
                        url,
                        own_bases=job.own_bases,
                        read_own_path=self._read_own_path,
                        fetch_timeout=config.fetch_timeout_seconds,
                        max_bytes=config.max_input_bytes,
                    )
                )
        except InputFetchError as exc:
            job.input_error = str(exc)
            return
        except Exception as exc:  # a bug here must fail the job, not hang every poll of it
            log.exception("emulator: fetching the inputs of %s failed", job.request_id)
            job.input_error = f"could not fetch the inputs: emulator error {exc!r}"
            return
        job.inputs = pictures

    async def _read_own_path(self, path: str) -> bytes:
        """An input URL that points at this emulator, read without HTTP; ``LookupError`` if absent."""
        if (match := _SAMPLE_PATH.fullmatch(path)) and match.group(1) in scenes.SAMPLES:
            return await asyncio.to_thread(scenes.sample_png, match.group(1))
        if match := _FILE_PATH.fullmatch(path):
            job = self.state.get(match.group(1))
            index = int(match.group(2))
            if job is not None and await self._settle(job) == "succeeded" and index < job.plan.num_outputs:
                return await self._render(job, index)
        raise LookupError(f"no file at {path}")

    async def _render(self, job: Job, index: int) -> bytes:
        key = (job.request_id, index)
        cached = self.state.renders.get(key)
        if cached is not None:
            return cached
        pictures = job.inputs or []
        picture = pictures[index % len(pictures)] if pictures else None
        plan = job.plan
        spec = OutputSpec(plan.prompt, plan.seed, index, plan.aspect, plan.long_side)
        data = await asyncio.to_thread(render_output, picture, spec)
        self.state.renders.put(key, data)
        return data

    def _output(self, request: Request, job: Job) -> dict[str, Any]:
        urls = [f"{self._base(request)}/files/{job.request_id}/{n}.png" for n in range(job.plan.num_outputs)]
        kind = job.plan.output_kind
        if kind == "none":
            return {}
        return {kind: urls[0]} if kind in ("image", "video") else {kind: urls}

    # -- RunComfy's endpoints ----------------------------------------------------------------------

    async def submit(self, request: Request, model_id: str) -> Response:
        """``POST /v1/models/{model_id}``: create a job."""
        raw = await request.body()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = _INVALID_JSON

        async def handle(entry: JournalEntry) -> Response:
            token = self._token(request)
            self._check_model(model_id)
            spec = spec_for(model_id)
            if payload is _INVALID_JSON:
                raise ApiError(
                    422,
                    422001,
                    "Request body is not valid JSON",
                    detail=[{"loc": ["body"], "msg": "invalid JSON"}],
                )
            try:
                valid = validate_input(spec, payload)
            except InputSchemaError as exc:
                raise ApiError(
                    422, 422001, f"Input does not match the schema of {model_id}", detail=exc.detail
                ) from None
            plan = self.state.plan(spec, valid, image_url_fields(valid))
            try:
                job = self.state.submit(token, model_id, valid, plan)
            except InsufficientBalance as exc:
                raise ApiError(402, 400002, str(exc)) from None
            entry.request_id = job.request_id
            job.own_bases = tuple(dict.fromkeys((self._base(request), str(request.base_url).rstrip("/"))))
            if plan.image_urls and plan.fail_message is None:
                job.inputs_task = asyncio.ensure_future(self._fetch_inputs(job))
            urls = self._urls(request, job.request_id, "status", "result", "cancel")
            return JSONResponse({"request_id": job.request_id, **urls})

        body = None if payload is _INVALID_JSON else payload
        return await self._serve(request, "submit", handle, model_id=model_id, body=body)

    async def model_info(self, request: Request, model_id: str) -> Response:
        """``GET /v1/models/{model_id}``: the model's name and price."""

        async def handle(entry: JournalEntry) -> Response:
            self._token(request)
            self._check_model(model_id)
            spec = spec_for(model_id)
            info: dict[str, Any] = {
                "model_id": model_id,
                "name": spec.name,
                "base_price_usd": self.state.config.price_usd,
                "price_unit": "per_request",
                "output_kind": spec.output_kind,
            }
            if spec.input_model is not None:
                info["input_schema"] = spec.input_model.model_json_schema()
            return JSONResponse(info)

        return await self._serve(request, "model", handle, model_id=model_id)

    async def status(self, request: Request, request_id: str) -> Response:
        """``GET /v1/requests/{id}/status``: ``in_queue``, ``in_progress``, ``completed``, ``cancelled``."""

        async def handle(entry: JournalEntry) -> Response:
            job = self._job(request, request_id)
            phase = await self._settle(job)
            word = self.state.config.failed_status_word if phase == "failed" else _STATUS_WORDS[phase]
            body: dict[str, Any] = {"request_id": request_id, "status": word}
            if phase == "in_queue":
                body["queue_position"] = self.state.queue_position(job)
            return JSONResponse({**body, **self._urls(request, request_id, "status", "result")})

        return await self._serve(request, "status", handle, request_id=request_id)

    async def result(self, request: Request, request_id: str) -> Response:
        """``GET /v1/requests/{id}/result``: the outputs once succeeded, else the current state."""

        async def handle(entry: JournalEntry) -> Response:
            job = self._job(request, request_id)
            phase = await self._settle(job)
            body: dict[str, Any] = {"request_id": request_id, "status": phase}
            if phase == "succeeded":
                body["output"] = self._output(request, job)
            finished = phase in ("succeeded", "failed", "cancelled")
            body["created_at"] = _iso(job.created_at)
            body["finished_at"] = _iso(job.finished_at if finished else None)
            if phase == "failed":
                kind = "model_error" if job.plan.fail_message else "input_error"
                body["error"] = {"message": job.failure, "type": kind}
            if request.query_params.get("include_cost", "").lower() in ("true", "1", "yes"):
                body["cost"] = job.cost_usd
                body["model_id"] = job.model_id
            return JSONResponse(body)

        return await self._serve(request, "result", handle, request_id=request_id)

    async def cancel(self, request: Request, request_id: str) -> Response:
        """``POST /v1/requests/{id}/cancel``: 202; only a queued job can be cancelled."""

        async def handle(entry: JournalEntry) -> Response:
            job = self._job(request, request_id)
            cancelled = self.state.cancel(job)
            phase = await self._settle(job)
            word = self.state.config.failed_status_word if phase == "failed" else _STATUS_WORDS[phase]
            outcome = "cancelled" if cancelled else "not_cancellable"
            return JSONResponse(
                {"request_id": request_id, "status": word, "outcome": outcome}, status_code=202
            )

        return await self._serve(request, "cancel", handle, request_id=request_id)

    # -- files ------------------------------------------------------------------------------------

    async def file(self, request: Request, request_id: str, index: int) -> Response:
        """``GET /files/{id}/{n}.png``: an output file; public, like RunComfy's CDN (no token)."""

        async def handle(entry: JournalEntry) -> Response:
            job = self.state.get(request_id) if REQUEST_ID_PATTERN.fullmatch(request_id) else None
            if job is None or await self._settle(job) != "succeeded" or index >= job.plan.num_outputs:
                raise ApiError(404, 404001, f"No output file {index} for request {request_id}")
            length, parts = padded_png(await self._render(job, index), job.plan.output_bytes)
            return StreamingResponse(
                _aiter(parts), media_type="image/png", headers={"content-length": str(length)}
            )

        return await self._serve(request, "file", handle, request_id=request_id)

    async def sample_list(self, request: Request) -> Response:
        """``GET /samples/``: the sample input pictures."""
        base = self._base(request)
        samples = [
            {"name": name, "url": f"{base}/samples/{name}.png", "width": w, "height": h}
            for name, (w, h) in scenes.SAMPLES.items()
        ]
        return JSONResponse({"samples": samples})

    async def sample(self, request: Request, name: str) -> Response:
        """``GET /samples/{name}.png``: one sample picture, for examples that need an input offline."""

        async def handle(entry: JournalEntry) -> Response:
            if name not in scenes.SAMPLES:
                raise ApiError(404, 404001, f"No sample named {name!r}; see /samples/")
            data = await asyncio.to_thread(scenes.sample_png, name)
            return Response(data, media_type="image/png")

        return await self._serve(request, "sample", handle)


_INVALID_JSON = object()


async def _aiter(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _without_token(entry: dict[str, Any], config: EmulatorConfig) -> dict[str, Any]:
    """A journal entry for the admin API, which needs no token and so must not reveal one.

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
    return entry


def _add_admin_routes(app: FastAPI, state: EmulatorState) -> None:
    """``/_emulator/...``: the controls over HTTP for an emulator in another process; no token, no journal."""

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def admin(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await handler(request)
            except (TypeError, ValueError, ValidationError) as exc:  # ValidationError is a ValueError too
                return JSONResponse({"detail": str(exc)}, status_code=400)
            return JSONResponse(result)

        return endpoint

    async def health(request: Request) -> Any:
        return {"status": "ok"}

    async def get_config(request: Request) -> Any:
        return state.config.public_dict()

    async def set_config(request: Request) -> Any:
        return state.set_config(**await body(request)).public_dict()

    async def reset(request: Request) -> Any:
        state.reset()
        return {"reset": True}

    async def add_fault(request: Request) -> Any:
        return state.add_fault(**await body(request)).to_dict()

    async def list_faults(request: Request) -> Any:
        return [f.to_dict() for f in state.faults]

    async def clear_faults(request: Request) -> Any:
        state.clear_faults()
        return []

    async def add_rule(request: Request) -> Any:
        return state.add_rule(**await body(request)).to_dict()

    async def list_rules(request: Request) -> Any:
        return [r.to_dict() for r in state.rules]

    async def clear_rules(request: Request) -> Any:
        state.clear_rules()
        return []

    async def list_jobs(request: Request) -> Any:
        return [j.to_dict() for j in state.jobs]

    async def get_job(request: Request) -> Any:
        job = state.job(request.path_params["request_id"])
        return job.to_dict() if job else None

    async def expire(request: Request) -> Any:
        return {"expired": state.expire(request.path_params["request_id"])}

    async def journal(request: Request) -> Any:
        endpoint = request.query_params.get("endpoint")
        return [_without_token(e.to_dict(), state.config) for e in state.journal.of(endpoint)]

    async def clear_journal(request: Request) -> Any:
        state.journal.clear()
        return []

    for path, handler, method in (
        ("/health", health, "GET"),
        ("/config", get_config, "GET"),
        ("/config", set_config, "POST"),
        ("/reset", reset, "POST"),
        ("/faults", list_faults, "GET"),
        ("/faults", add_fault, "POST"),
        ("/faults", clear_faults, "DELETE"),
        ("/rules", list_rules, "GET"),
        ("/rules", add_rule, "POST"),
        ("/rules", clear_rules, "DELETE"),
        ("/jobs", list_jobs, "GET"),
        ("/jobs/{request_id}", get_job, "GET"),
        ("/jobs/{request_id}/expire", expire, "POST"),
        ("/journal", journal, "GET"),
        ("/journal", clear_journal, "DELETE"),
    ):
        app.add_api_route(f"/_emulator{path}", admin(handler), methods=[method], include_in_schema=False)
