"""The outputs view: a FastAPI app the API server mounts under ``/runcomfy``.

Routes (every one behind Airflow's own authentication and the auth manager's
per-DAG decision, the same dependencies the REST API uses):

- ``GET /outputs/{dag_id}/{run_id}/{task_id}?map_index=`` a task instance's
  inputs beside its outputs; for a batch task, its manifest as paged tiles;
- ``GET /gallery/{dag_id}/{run_id}?show=&page=`` every RunComfy task of a run;
- ``GET /picture/{dag_id}/{run_id}/{task_id}/{map_index}/{input|output}/{n}``
  one picture, streamed (``media``);
- ``GET /manifest/{dag_id}/{run_id}/{task_id}?map_index=`` a batch's manifest.

Why server-rendered pages and not a React app: the view is a read-only page of
pictures; HTML from the API server needs no JavaScript bundle to build, pin and
ship with the wheel, loads in the iframe Airflow gives external views, and the
same URL works as the target of the operator's extra link.

This module is imported only by the API server (``plugin.LazyApp``), on the first request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from airflow_provider_runcomfy.plugins import html
from airflow_provider_runcomfy.plugins.media import (
    SAFE_HEADERS,
    Fetcher,
    Picture,
    PictureUnavailable,
    open_data_uri,
    open_stored,
    picture_kind,
)
from airflow_provider_runcomfy.plugins.records import (
    MEDIA_EXTENSIONS,
    Item,
    extension,
    filter_items,
    item_from_manifest_line,
    load_items,
    read_manifest_lines,
)

#: Tiles per page of a gallery: each shows two pictures, all streamed through the API server.
PAGE_SIZE = 12
#: The most of a manifest the view reads (about 20,000 lines); larger ones are opened from storage.
MAX_MANIFEST_VIEW_BYTES = 20_000_000
#: The most of a manifest the "Manifest" link streams.
MAX_MANIFEST_BYTES = 200_000_000

_HTML_HEADERS = {
    "Content-Security-Policy": html.PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}


def create_app() -> FastAPI:
    """The outputs view's application (built on the API server's first request to it)."""
    # Reading a task's outputs is reading its task instance and its XComs: a user needs both.
    can_read = [
        Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
        Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
    ]
    app = FastAPI(title="RunComfy outputs", docs_url=None, redoc_url=None, openapi_url=None)
    fetcher: list[Fetcher] = []  # one per process, made inside the server's event loop

    @app.get("/outputs/{dag_id}/{run_id}/{task_id}", dependencies=can_read, response_class=HTMLResponse)
    def task_view(
        request: Request,
        dag_id: str,
        run_id: str,
        task_id: str,
        session: SessionDep,
        map_index: str = "-1",
        show: str = "all",
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        prefix = _prefix(request)
        index = _map_index(map_index)
        found = load_items(session, dag_id, run_id, task_id, index)
        if not found:
            return _html(html.message_page(task_id, "This task instance has no RunComfy request (yet)."))
        item = found[0]
        if not item.manifest:
            return _html(html.task_page(item, prefix=prefix))
        lines = _manifest_items(item)
        shown, counts, pages = _paged(
            lines,
            show,
            page,
            lambda s, p: html.view_href(
                prefix, "outputs", dag_id, run_id, task_id, map_index=index, show=s, page=p
            ),
        )
        body = (
            html.pills(
                show,
                counts,
                lambda s: html.view_href(prefix, "outputs", dag_id, run_id, task_id, map_index=index, show=s),
            )
            + pages
        )
        return _html(html.task_page(item, prefix=prefix, items=shown, pages=body))

    @app.get(
        "/gallery/{dag_id}/{run_id}",
        dependencies=[*can_read, Depends(requires_access_dag("GET", DagAccessEntity.RUN))],
        response_class=HTMLResponse,
    )
    def run_view(
        request: Request,
        dag_id: str,
        run_id: str,
        session: SessionDep,
        show: str = "all",
        page: Annotated[int, Query(ge=1)] = 1,
    ) -> HTMLResponse:
        prefix = _prefix(request)
        items: list[Item] = []
        for found in load_items(session, dag_id, run_id):
            # A batch task is shown as its manifest's lines, each a tile of its own.
            items += _manifest_items(found) if found.manifest else [found]
        shown, counts, pages = _paged(
            items, show, page, lambda s, p: html.view_href(prefix, "gallery", dag_id, run_id, show=s, page=p)
        )
        return _html(
            html.gallery_page(dag_id, run_id, shown, prefix=prefix, show=show, counts=counts, pages=pages)
        )

    @app.get("/picture/{dag_id}/{run_id}/{task_id}/{map_index}/{kind}/{n}", dependencies=can_read)
    async def picture(
        request: Request, source: Annotated[tuple[str, str, str | None], Depends(picture_source)]
    ) -> Response:
        kind, location, sha = source
        if sha and request.headers.get("if-none-match") == f'"{sha}"':
            return Response(status_code=304, headers=SAFE_HEADERS)
        try:
            if kind == "data":
                opened = open_data_uri(location)
            elif kind == "stored":
                if not _is_own_or_input_copy(location):
                    raise PictureUnavailable("This storage location is not served by the view.", 403)
                opened = await run_in_threadpool(open_stored, location, sha256=sha)
            else:
                if not fetcher:
                    fetcher.append(Fetcher())
                base_url = await run_in_threadpool(runcomfy_base_url)
                opened = await fetcher[0].open(location, api_base_url=base_url)
        except PictureUnavailable as error:
            return Response(
                error.message, status_code=error.status, media_type="text/plain", headers=SAFE_HEADERS
            )
        return _stream(opened)

    @app.get("/manifest/{dag_id}/{run_id}/{task_id}", dependencies=can_read)
    def manifest(
        dag_id: str, run_id: str, task_id: str, session: SessionDep, map_index: str = "-1"
    ) -> Response:
        found = load_items(session, dag_id, run_id, task_id, _map_index(map_index))
        if not found or not found[0].manifest:
            raise HTTPException(404, "This task instance names no manifest.")
        uri = found[0].manifest
        _check_manifest(found[0])
        return StreamingResponse(
            _manifest_bytes(uri),
            media_type="text/plain; charset=utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"},
        )

    return app


def picture_source(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    kind: str,
    n: int,
    session: SessionDep,
    item: int | None = None,
) -> tuple[str, str, str | None]:
    """``(kind of source, location, sha256)`` of one picture, looked up in the metadata DB."""
    found = load_items(session, dag_id, run_id, task_id, map_index)
    if not found:
        raise HTTPException(404, "No RunComfy task instance here.")
    record = found[0]
    if item is not None:
        # The parsed manifest the pages keep; looked up by line number, as blank lines are skipped.
        line = next((each for each in _manifest_items(record) if each.item == item), None)
        if line is None:
            raise HTTPException(404, "No such line in the manifest.")
        record = line
    if kind == "input":
        if n >= len(record.inputs):
            raise HTTPException(404, "No such input picture.")
        location = record.inputs[n]
        return picture_kind(location), location, None
    if kind != "output":
        raise HTTPException(404, "Pictures are inputs or outputs.")
    source = record.output_source(n)
    if source is None:
        raise HTTPException(404, "No such output.")
    sha = record.stored[n].get("sha256") if source[0] == "stored" else None
    return source[0], source[1], str(sha) if sha else None


_BASE_URL_CACHE: dict[str, tuple[float, str | None]] = {}


def runcomfy_base_url(conn_id: str = "runcomfy_default") -> str | None:
    """The RunComfy API base URL of ``conn_id`` (None: RunComfy's own), read at most once a minute.

    It decides the URL policy for pictures fetched by the view: plain http to loopback only
    while the connection points at a loopback emulator, as for the workers' downloads.
    """
    now = time.monotonic()
    cached = _BASE_URL_CACHE.get(conn_id)
    if cached and now - cached[0] < 60:
        return cached[1]
    from airflow.models.connection import Connection

    try:
        host = (Connection.get_connection_from_secrets(conn_id).host or "").strip() or None
    except Exception:  # no such connection: RunComfy's own rules, the strict ones
        host = None
    _BASE_URL_CACHE[conn_id] = (now, host)
    return host


def _stream(opened: Picture) -> StreamingResponse:
    headers = dict(SAFE_HEADERS)
    if opened.length is not None:
        headers["Content-Length"] = str(opened.length)
    if opened.etag:
        headers["ETag"] = opened.etag
    return StreamingResponse(opened.chunks, media_type=opened.content_type, headers=headers)


#: Parsed manifests, for paging and filtering without parsing 10,000 lines again (about 0.2 s).
_MANIFESTS: dict[tuple[str, str, int], tuple[float, list[Item]]] = {}
MANIFEST_CACHE_SECONDS = 30
MANIFEST_CACHE_SIZE = 4


def _manifest_items(item: Item) -> list[Item]:
    _check_manifest(item)
    key = (str(item.manifest), item.task_id, item.map_index)
    now = time.monotonic()
    cached = _MANIFESTS.get(key)
    if cached and now - cached[0] < MANIFEST_CACHE_SECONDS:
        return cached[1]
    try:
        lines = read_manifest_lines(str(item.manifest), max_bytes=MAX_MANIFEST_VIEW_BYTES)
        items = [
            item_from_manifest_line(item, index, record) for index, record in lines if record is not None
        ]
    except (OSError, ValueError) as error:
        raise HTTPException(502, f"The manifest cannot be read from the API server: {error}") from None
    for old in sorted(_MANIFESTS, key=lambda k: _MANIFESTS[k][0])[
        : max(0, len(_MANIFESTS) - MANIFEST_CACHE_SIZE + 1)
    ]:
        del _MANIFESTS[old]
    _MANIFESTS[key] = (now, items)
    return items


def _check_manifest(item: Item) -> None:
    if not str(item.manifest).endswith(".jsonl") or not item.in_run_folder(str(item.manifest)):
        raise HTTPException(403, "The manifest is not where the batch keeps this run's files.")


def _manifest_bytes(uri: str) -> Iterator[bytes]:
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri)
    sent = 0
    with path.fs.open(path.path, "rb") as file:
        while sent < MAX_MANIFEST_BYTES and (chunk := file.read(1024 * 1024)):
            sent += len(chunk)
            yield chunk


def _paged(items: list[Item], show: str, page: int, href: Any) -> tuple[list[Item], dict[str, int], str]:
    """The tiles of page ``page`` of ``items`` filtered by ``show``, the filter counts, the pager."""
    show = show if show in ("all", "succeeded", "failed") else "all"
    counts = {name: len(filter_items(items, name)) for name in ("all", "succeeded", "failed")}
    chosen = filter_items(items, show)
    last = max(1, math.ceil(len(chosen) / PAGE_SIZE))
    page = min(page, last)
    shown = chosen[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    pager = html.pager(page, page < last, lambda p: href(show, p)) if last > 1 else ""
    return shown, counts, pager


def _is_own_or_input_copy(location: str) -> bool:
    """A storage location the view may read: a picture's extension (its bytes are checked on opening)."""
    return extension(location) in MEDIA_EXTENSIONS


def _prefix(request: Request) -> str:
    """Where this app is mounted, as the browser sees it (``[api] base_url``'s path included)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _map_index(value: str) -> int:
    # The UI fills ``{MAP_INDEX}`` only for mapped task instances; otherwise the text stays.
    try:
        return int(value)
    except ValueError:
        return -1


def _html(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers=_HTML_HEADERS)
