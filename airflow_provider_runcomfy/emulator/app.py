"""The HTTP face of the emulator: RunComfy's Model API, output files and samples.

Every API and file request takes one path, ``_Api._serve``: record it in the
journal, apply a planned fault if one matches, run the handler, and note
the status answered. Handlers raise ``ApiError`` for RunComfy's documented
errors; ``_serve`` turns it into the JSON body RunComfy sends. The admin
API (``/_emulator/...``) lives in admin.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from airflow_provider_runcomfy.emulator.admin import add_admin_routes
from airflow_provider_runcomfy.emulator.answers import (
    ApiError,
    DroppedConnection,
    TruncatedResponse,
    aiter,
    bad_body_answer,
    replacing_answer,
)
from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.images import padded_png
from airflow_provider_runcomfy.emulator.models import (
    InputSchemaError,
    image_url_fields,
    is_valid_model_id,
    model_info,
    spec_for,
    validate_input,
)
from airflow_provider_runcomfy.emulator.render import SAMPLES, sample_png
from airflow_provider_runcomfy.emulator.state import (
    EmulatorState,
    InsufficientBalance,
    Job,
    JournalEntry,
    Phase,
)
from airflow_provider_runcomfy.emulator.worker import Worker

#: RunComfy's request ids; anything else is answered 404001 without a lookup.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BOMBS = ("gzip_bomb", "zlib_bomb", "png_bomb")

#: ``/status`` words for each phase; a failed job's word is the config's ``failed_status_word``.
_STATUS_WORDS: dict[Phase, str] = {
    "in_queue": "in_queue",
    "in_progress": "in_progress",
    "succeeded": "completed",
    "cancelled": "cancelled",
}


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EmulatorApp(FastAPI):
    """The emulator's FastAPI application; ``app.state.emulator`` is its ``EmulatorState``."""


def create_app(
    config: EmulatorConfig | None = None, *, state: EmulatorState | None = None, **overrides: Any
) -> EmulatorApp:
    """Build the emulator's ASGI app, for uvicorn or any ASGI server.

    :param config: the settings (default ``EmulatorConfig()``), updated by ``overrides``.
    :param state: an existing ``EmulatorState`` to serve (``config`` and ``overrides`` are then ignored);
        ``RunComfyEmulator`` passes its own so that its controls and the server share one memory.

    ``uvicorn --factory airflow_provider_runcomfy.emulator.app:create_app`` serves the defaults
    (without the ``drop``/``truncate`` faults, which need ``connections.protocol_class``).
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
    add_admin_routes(app, state)
    return app


class _Api:
    """The handlers of RunComfy's endpoints, the output files and the samples."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.worker = Worker(state)

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
        fault = self.state.take_fault(endpoint, request_id)
        if fault is None:
            return await self._run(handle, entry)
        entry.fault = fault.kind
        if fault.kind in _BOMBS:  # the first one of a size is built (~0.2 s per GiB): off the loop
            replaced = await asyncio.to_thread(replacing_answer, fault)
        else:
            replaced = replacing_answer(fault)
        if replaced is not None:
            entry.status_code = replaced.status_code
            return replaced
        # The others run the handler: its side effects (a job created, cancelled) happen for real,
        # and for submit/cancel before the delay; the fault loses the answer, not what the call did.
        if fault.kind == "delay":
            assert fault.seconds is not None
            if endpoint in ("submit", "cancel"):
                response = await self._run(handle, entry)
                await asyncio.sleep(fault.seconds)
                return response
            await asyncio.sleep(fault.seconds)
            return await self._run(handle, entry)
        response = await self._run(handle, entry)
        if fault.kind == "drop":
            entry.status_code = None
            return DroppedConnection()
        if fault.kind == "bad_body":
            response = bad_body_answer(fault)
            entry.status_code = response.status_code
            return response
        return TruncatedResponse(response, fault.after_bytes or 0)

    @staticmethod
    async def _run(handle: Callable[[JournalEntry], Awaitable[Response]], entry: JournalEntry) -> Response:
        try:
            response = await handle(entry)
        except ApiError as exc:
            response = exc.response()
        entry.status_code = response.status_code
        return response

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
                job = self.state.submit(token, model_id, valid, plan, self.state.estimate(spec, valid))
            except InsufficientBalance as exc:
                # HTTP 400 as RunComfy's error table has it; an ``http`` fault gives the 402 form.
                raise ApiError(400, 400002, str(exc)) from None
            entry.request_id = job.request_id
            job.own_bases = tuple(dict.fromkeys((self._base(request), str(request.base_url).rstrip("/"))))
            if plan.image_urls and plan.fail_message is None:
                job.inputs_task = asyncio.ensure_future(self.worker.fetch_inputs(job))
            urls = self._urls(request, job.request_id, "status", "result", "cancel")
            return JSONResponse({"request_id": job.request_id, **urls})

        body = None if payload is _INVALID_JSON else payload
        return await self._serve(request, "submit", handle, model_id=model_id, body=body)

    async def model_info(self, request: Request, model_id: str) -> Response:
        """``GET /v1/models/{model_id}``: the model's name and price."""

        async def handle(entry: JournalEntry) -> Response:
            self._token(request)
            self._check_model(model_id)
            info = model_info(spec_for(model_id), self.state.config.price_usd)
            return JSONResponse(info)

        return await self._serve(request, "model", handle, model_id=model_id)

    async def status(self, request: Request, request_id: str) -> Response:
        """``GET /v1/requests/{id}/status``: ``in_queue``, ``in_progress``, ``completed``, ``cancelled``."""

        async def handle(entry: JournalEntry) -> Response:
            job = self._job(request, request_id)
            phase = await self.worker.settle(job)
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
            phase = await self.worker.settle(job)
            if phase in ("succeeded", "failed") and self.state.take_fault(
                "result", request_id, not_written=True
            ):
                entry.fault = "not_written"  # finished, but the outcome is "not written yet"
                return JSONResponse({"request_id": request_id, "status": "completed"})
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
            phase = await self.worker.settle(job)
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
            if job is None or await self.worker.settle(job) != "succeeded" or index >= job.plan.num_outputs:
                raise ApiError(404, 404001, f"No output file {index} for request {request_id}")
            length, parts = padded_png(await self.worker.render(job, index), job.plan.output_bytes)
            return StreamingResponse(
                aiter(parts), media_type="image/png", headers={"content-length": str(length)}
            )

        return await self._serve(request, "file", handle, request_id=request_id)

    async def sample_list(self, request: Request) -> Response:
        """``GET /samples/``: the sample input pictures."""
        base = self._base(request)
        samples = [
            {"name": name, "url": f"{base}/samples/{name}.png", "width": w, "height": h}
            for name, (w, h) in SAMPLES.items()
        ]
        return JSONResponse({"samples": samples})

    async def sample(self, request: Request, name: str) -> Response:
        """``GET /samples/{name}.png``: one sample picture, for examples that need an input offline."""

        async def handle(entry: JournalEntry) -> Response:
            if name not in SAMPLES:
                raise ApiError(404, 404001, f"No sample named {name!r}; see /samples/")
            data = await asyncio.to_thread(sample_png, name)
            return Response(data, media_type="image/png")

        return await self._serve(request, "sample", handle)


_INVALID_JSON = object()
