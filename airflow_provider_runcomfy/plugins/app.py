"""The outputs view: a FastAPI app the API server mounts under ``/runcomfy``.

Routes (every one behind Airflow's own authentication and the auth manager's
per-DAG decision, the same dependencies the REST API uses):

- ``GET /outputs/{dag_id}/{run_id}/{task_id}?map_index=`` a task instance's
  inputs beside its outputs; for a batch task, its manifest as paged tiles, and with
  ``&item=N`` one line of it;
- ``GET /gallery/{dag_id}/{run_id}?show=&page=`` every RunComfy task of a run;
- ``GET /picture/{dag_id}/{run_id}/{task_id}/{map_index}/{input|output}/{n}?size=``
  one picture, streamed (``media``), or its thumbnail (``thumbnails``);
- ``GET /manifest/{dag_id}/{run_id}/{task_id}?map_index=`` a batch's manifest.

Why server-rendered pages and not a React app: the view is a read-only page of
pictures; HTML from the API server needs no JavaScript bundle to build, pin and
ship with the wheel, loads in the iframe Airflow gives external views, and the
same URL works as the target of the operator's extra link.

This module is imported only by the API server (``plugin.LazyApp``), on the first request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from airflow_provider_runcomfy.outputs.files import storage_path
from airflow_provider_runcomfy.plugins import html
from airflow_provider_runcomfy.plugins.manifests import MANIFESTS, ManifestIndex, read_lines
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
    Item,
    item_from_manifest_line,
    load_items,
    location_parts,
)
from airflow_provider_runcomfy.plugins.status import STOPPED_STATES, advice, ask_runcomfy
from airflow_provider_runcomfy.plugins.thumbnails import (
    SIZES,
    THUMBNAILS,
    URL_TTL_SECONDS,
    ThumbnailError,
    make_thumbnail,
)

log = logging.getLogger(__name__)

#: Tiles per page of a gallery: each shows two thumbnails.
PAGE_SIZE = 12
#: The most of a manifest the "Manifest" link streams.
MAX_MANIFEST_BYTES = 200_000_000

_HTML_HEADERS = {
    "Content-Security-Policy": html.PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}

#: The process's one fetcher of remote pictures (the client's ``Opener`` underneath).
FETCHER = Fetcher()


def create_app() -> FastAPI:
    """The outputs view's application (built on the API server's first request to it)."""
    # Reading a task's outputs is reading its task instance and its XComs: a user needs both.
    can_read = [
        Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
        Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
    ]
    app = FastAPI(title="RunComfy outputs", docs_url=None, redoc_url=None, openapi_url=None)

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
        item: Annotated[int | None, Query(ge=0)] = None,
    ) -> HTMLResponse:
        prefix = _prefix(request)
        index = _map_index(map_index)
        found = load_items(session, dag_id, run_id, task_id, index)
        if not found:
            return _html(html.message_page(task_id, "This task instance has no RunComfy request (yet)."))
        record = found[0]
        if record.manifest:
            manifest = _own_index(record)
            if item is not None:
                return _html(
                    html.task_page(_manifest_line(record, manifest, item), prefix=prefix, parent=record)
                )
            segment = Segment(record, manifest)
            shown, counts, pages = paged(
                [segment],
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
                    lambda s: html.view_href(
                        prefix, "outputs", dag_id, run_id, task_id, map_index=index, show=s
                    ),
                )
                + pages
            )
            return _html(
                html.task_page(record, prefix=prefix, items=shown, pages=body, summary=segment.summary())
            )
        note = _status_from_runcomfy(record)
        return _html(html.task_page(record, prefix=prefix, note=note))

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
        segments = []
        for found in load_items(session, dag_id, run_id):
            # A batch task is shown as its manifest's lines, each a tile of its own.
            manifest, problem = None, None
            if found.manifest:
                try:
                    manifest = _own_index(found)
                except HTTPException as refused:
                    problem = str(refused.detail)
            segments.append(Segment(found, manifest, problem))
        shown, counts, pages = paged(
            segments,
            show,
            page,
            lambda s, p: html.view_href(prefix, "gallery", dag_id, run_id, show=s, page=p),
        )
        return _html(
            html.gallery_page(
                dag_id,
                run_id,
                shown,
                prefix=prefix,
                show=show,
                counts=counts,
                pages=pages,
                summaries=[segment.summary() for segment in segments],
            )
        )

    @app.get("/picture/{dag_id}/{run_id}/{task_id}/{map_index}/{kind}/{n}", dependencies=can_read)
    def picture(
        request: Request,
        source: Annotated[tuple[str, str, str | None, Item], Depends(picture_source)],
        size: str | None = None,
    ) -> Response:
        kind, location, sha, record = source
        side = SIZES.get(size or "")
        tag = f'"{sha}-{size}"' if sha and side else (f'"{sha}"' if sha else None)
        if tag and request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=SAFE_HEADERS)
        try:
            if side:
                return _thumbnail(kind, location, sha, record, side, tag)
            return _stream(_open(kind, location, sha, record))
        except (PictureUnavailable, ThumbnailError) as error:
            status = error.status if isinstance(error, PictureUnavailable) else 415
            reason = error.message if isinstance(error, PictureUnavailable) else f"No thumbnail: {error}"
            log.info(
                "RunComfy view: picture %s/%s of %s not shown: %s",
                kind,
                request.path_params.get("n"),
                record.task_id,
                reason,
            )
            return Response(reason, status_code=status, media_type="text/plain", headers=SAFE_HEADERS)

    @app.get("/manifest/{dag_id}/{run_id}/{task_id}", dependencies=can_read)
    def manifest(
        dag_id: str, run_id: str, task_id: str, session: SessionDep, map_index: str = "-1"
    ) -> Response:
        found = load_items(session, dag_id, run_id, task_id, _map_index(map_index))
        if not found or not found[0].manifest:
            raise HTTPException(404, "This task instance names no manifest.")
        _check_manifest(found[0])
        return StreamingResponse(
            _manifest_bytes(str(found[0].manifest)),
            media_type="text/plain; charset=utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"},
        )

    return app


# -- what a page shows ------------------------------------------------------------------------------


@dataclass
class Segment:
    """One RunComfy task instance of a page: itself, or (a batch) its manifest's lines."""

    record: Item
    manifest: ManifestIndex | None = None
    #: Why a batch's manifest is not shown (not where the batch keeps it, unreadable).
    problem: str | None = None

    def positions(self, show: str) -> Sequence[int]:
        if self.manifest is not None:
            return self.manifest.positions(show)
        if self.record.manifest:  # a batch whose manifest is not shown: no tiles
            return ()
        matches = {"all": True, "succeeded": self.record.succeeded, "failed": self.record.failed}[show]
        return (0,) if matches else ()

    def items(self, positions: Sequence[int]) -> list[Item]:
        if self.manifest is None:
            return [self.record] if positions else []
        lines = read_lines(str(self.record.manifest), self.manifest, positions)
        return [item_from_manifest_line(self.record, position, line) for position, line in lines]

    def summary(self) -> html.TaskSummary:
        record, manifest = self.record, self.manifest
        if manifest is not None:
            counts = {
                "total": len(manifest),
                "succeeded": manifest.count("succeeded"),
                "failed": manifest.count("failed"),
            }
            cost = manifest.cost_usd
        else:
            counts = dict(record.counts)
            cost = record.cost_usd
        return html.TaskSummary(record, counts, cost, self.problem)


def paged(
    segments: Sequence[Segment], show: str, page: int, href: Any
) -> tuple[list[Item], dict[str, int], str]:
    """The tiles of page ``page`` of ``segments`` filtered by ``show``, the filter counts, the pager.

    Only the lines on the page are read from their manifests; counts come from the indexes.
    """
    show = show if show in ("all", "succeeded", "failed") else "all"
    counts = {name: sum(len(s.positions(name)) for s in segments) for name in ("all", "succeeded", "failed")}
    last = max(1, -(-counts[show] // PAGE_SIZE))
    page = min(page, last)
    start, left = (page - 1) * PAGE_SIZE, PAGE_SIZE
    shown: list[Item] = []
    for segment in segments:
        positions = segment.positions(show)
        if start >= len(positions):
            start -= len(positions)
            continue
        chosen = positions[start : start + left]
        start = 0
        shown += segment.items(list(chosen))
        left -= len(chosen)
        if left <= 0:
            break
    pager = html.pager(page, page < last, lambda p: href(show, p)) if last > 1 else ""
    return shown, counts, pager


def _manifest_line(record: Item, manifest: ManifestIndex, position: int) -> Item:
    if position >= len(manifest):
        raise HTTPException(404, "No such line in the manifest.")
    [(_, line)] = read_lines(str(record.manifest), manifest, [position])
    return item_from_manifest_line(record, position, line)


def _status_from_runcomfy(record: Item) -> str | None:
    """Fill in the RunComfy status of a stopped task that recorded none; what the page then advises."""
    if record.status or not record.request_id or record.state not in STOPPED_STATES:
        return None
    asked = ask_runcomfy(record.request_id)
    if asked.status:
        record.status, record.status_source = asked.status, "runcomfy"
        if asked.error and not record.error:
            record.error = asked.error
    return advice(record.state, asked)


# -- pictures ----------------------------------------------------------------------------------------


def picture_source(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    kind: str,
    n: int,
    session: SessionDep,
    item: int | None = None,
) -> tuple[str, str, str | None, Item]:
    """``(kind of source, location, sha256, item)`` of one picture, looked up in the metadata DB.

    Only what this task instance used or produced, from where the view may read it:
    kept copies from its own folder of its rendered ``output_dir``, inputs that are URLs
    (fetched under the URL policy) or inline ``data:``. A storage path named as an input
    (a param, a line of an inputs file) is never read: it could be another DAG's picture.
    """
    found = load_items(session, dag_id, run_id, task_id, map_index)
    if not found:
        raise HTTPException(404, "No RunComfy task instance here.")
    record = found[0]
    if item is not None:
        if not record.manifest:
            raise HTTPException(404, "This task instance has no manifest.")
        record = _manifest_line(record, _own_index(record), item)
    if kind == "input":
        if n >= len(record.inputs):
            raise HTTPException(404, "No such input picture.")
        location = record.inputs[n]
        source = picture_kind(location)
        if source == "stored":
            raise HTTPException(
                403, "A storage path named as an input is not served (only URLs and inline pictures are)."
            )
        return source, location, None, record
    if kind != "output":
        raise HTTPException(404, "Pictures are inputs or outputs.")
    if n < len(record.stored) and n >= len(record.outputs) and record.output_source(n) is None:
        raise HTTPException(403, "This kept copy is not in the task's own folder of its output_dir.")
    output = record.output_source(n)
    if output is None:
        raise HTTPException(404, "No such output.")
    sha = record.stored[n].get("sha256") if output[0] == "stored" else None
    return output[0], output[1], str(sha) if sha else None, record


def _open(kind: str, location: str, sha: str | None, record: Item) -> Picture:
    if kind == "data":
        return open_data_uri(location)
    if kind == "stored":
        _check_real_path(record, location)
        return open_stored(location, sha256=sha)
    return FETCHER.open(location, api_base_url=runcomfy_base_url())


def _thumbnail(
    kind: str, location: str, sha: str | None, record: Item, side: int, tag: str | None
) -> Response:
    if kind == "data":
        identity, max_age = f"data\n{location}", None
    elif kind == "stored":
        identity, max_age = f"stored\n{location}\n{sha or _stat(location)}", None
    else:
        identity, max_age = f"url\n{location}", float(URL_TTL_SECONDS)
    small = THUMBNAILS.get(identity, side, max_age=max_age)
    if small is None:
        opened = _open(kind, location, sha, record)
        if not opened.content_type.startswith("image/"):
            raise ThumbnailError(f"{opened.content_type} has no thumbnail; open it full size")
        small = make_thumbnail(b"".join(opened.chunks), side)  # type: ignore[arg-type]
        THUMBNAILS.put(identity, side, small)
    headers = dict(SAFE_HEADERS)
    if tag:
        headers["ETag"] = tag
    return Response(small, media_type="image/webp", headers=headers)


def _stat(uri: str) -> str:
    """What tells one version of a kept copy from the next, when the record names no sha256."""
    try:
        path = storage_path(uri, argument="the kept copy", access="read", fsspec_fallback=False)
        info = path.fs.info(path.path)
    except Exception:
        raise PictureUnavailable("The kept copy cannot be read from the API server.", 404) from None
    return f"{info.get('size')}:{info.get('mtime', info.get('LastModified', info.get('ETag')))}"


def _check_real_path(record: Item, uri: str) -> None:
    """A local kept copy must really be in the task's folder: a symbolic link out of it is refused."""
    found, folder = location_parts(uri), record.task_folder()
    if found is None or folder is None or found[0] != "file":
        return
    real = os.path.realpath("/" + "/".join(found[2]))
    home = os.path.realpath("/" + "/".join(folder[2]))
    if not real.startswith(home + os.sep):
        raise PictureUnavailable("This kept copy links out of the task's folder; it is not served.", 403)


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


# -- manifests --------------------------------------------------------------------------------------


def _own_index(record: Item) -> ManifestIndex:
    """The index of the batch's own manifest (403 if it names another; 502 if it cannot be read)."""
    _check_manifest(record)
    try:
        return MANIFESTS.index(str(record.manifest))
    except (OSError, ValueError) as error:
        raise HTTPException(502, f"The manifest cannot be read from the API server: {error}") from None


def _check_manifest(item: Item) -> None:
    if not item.is_own_manifest(str(item.manifest)):
        raise HTTPException(403, "The manifest is not where the batch keeps this task instance's files.")


def _manifest_bytes(uri: str) -> Iterator[bytes]:
    path = storage_path(uri, argument="the manifest", access="read", fsspec_fallback=False)
    sent = 0
    with path.fs.open(path.path, "rb") as file:
        while sent < MAX_MANIFEST_BYTES and (chunk := file.read(1024 * 1024)):
            sent += len(chunk)
            yield chunk


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
