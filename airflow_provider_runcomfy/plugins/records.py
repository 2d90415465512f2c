"""What the outputs view shows, read from Airflow's metadata DB in the API server.

A RunComfy task leaves everything the view needs behind: its state (the task
instance), the ``request_id`` XCom pushed right after the submit, its return
value (model, outputs, kept copies, cost) and its rendered template fields
(the prompt and the input pictures). A batch task's return value names its
``manifest.jsonl``, one line per input. Nothing here calls RunComfy.

The view never fetches a URL or opens a file it is *given* by the browser: a
picture is addressed by task instance and position, and its location is looked
up here, so the endpoint cannot be turned into an open proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow_provider_runcomfy.outputs.files import safe_segment
from airflow_provider_runcomfy.sources.images import input_images

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: Return-value keys that may name a batch's manifest (``RunComfyBatchOperator``).
MANIFEST_KEYS = ("manifest", "manifest_uri")

#: File extensions a kept copy may have to be served: pictures and videos, nothing else.
MEDIA_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif", "avif", "tiff", "mp4", "webm", "mov"})


@dataclass
class Item:
    """One RunComfy job as the view shows it: a task instance, or one line of a batch manifest."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    #: The line of the batch manifest (``None`` for a task instance of a model operator).
    item: int | None = None
    state: str | None = None
    status: str | None = None
    request_id: str | None = None
    model_id: str | None = None
    prompt: str | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    stored: list[dict[str, Any]] = field(default_factory=list)
    cost_usd: float | None = None
    error: str | None = None
    manifest: str | None = None
    #: A batch's counts of items (``total``, ``succeeded``, ``failed``) from its return value.
    counts: dict[str, int] = field(default_factory=dict)
    try_number: int | None = None
    operator: str | None = None

    #: The task's rendered ``output_dir``: the only tree its kept copies may be served from.
    output_dir: str | None = None
    #: Where ``status`` came from: ``None`` (the task recorded it) or ``"runcomfy"`` (asked now).
    status_source: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def failed(self) -> bool:
        """Ended without outputs: the task failed, or its RunComfy job did not succeed."""
        if self.succeeded:
            return False
        return self.state in ("failed", "upstream_failed") or self.status in ENDED_WITHOUT_OUTPUTS

    @property
    def output_count(self) -> int:
        return max(len(self.outputs), len(self.stored))

    @property
    def input_name(self) -> str:
        """What a reviewer recognises an item by: its first input's file name, or its prompt's start."""
        for location in self.inputs:
            name = file_name(location)
            if name:
                return name
        if self.prompt:
            return self.prompt if len(self.prompt) <= 48 else self.prompt[:47].rstrip() + "…"
        return ""

    def output_source(self, n: int) -> tuple[str, str] | None:
        """``("stored", uri)`` of output ``n``'s kept copy if it may be served, else ``("url", url)``."""
        if n < len(self.stored):
            uri = str(self.stored[n].get("uri") or "")
            if uri and self.is_own_copy(uri):
                return "stored", uri
        if n < len(self.outputs):
            return "url", self.outputs[n]
        return None

    def task_folder(self) -> tuple[str, str, tuple[str, ...]] | None:
        """``{output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}`` as ``location_parts``, or None.

        The folder ``outputs.files`` writes this task instance's copies (and a batch's
        manifest) to, built from the task's own rendered ``output_dir``: never from a
        path a param, an XCom or a manifest line names.
        """
        if not self.output_dir:
            return None
        base = location_parts(self.output_dir)
        if base is None:
            return None
        scheme, netloc, segments = base
        own = (safe_segment(self.dag_id), safe_segment(self.run_id), safe_segment(self.task_id))
        return scheme, netloc, (*segments, *own, str(self.map_index))

    def in_task_folder(self, uri: str) -> bool:
        """Whether ``uri`` lies inside ``task_folder`` (no ``..``, no other scheme or bucket)."""
        folder, found = self.task_folder(), location_parts(uri)
        if folder is None or found is None:
            return False
        depth = len(folder[2])
        return found[:2] == folder[:2] and len(found[2]) > depth and found[2][:depth] == folder[2]

    def is_own_copy(self, uri: str) -> bool:
        """Whether ``uri`` is a picture in this task instance's folder of its ``output_dir``.

        The URI comes from XCom or a manifest line, which a user may write: without this
        check the API server would read whatever file they name (another DAG's pictures).
        """
        return self.in_task_folder(uri) and extension(uri) in MEDIA_EXTENSIONS

    def is_own_manifest(self, uri: str) -> bool:
        """Whether ``uri`` is this task instance's ``manifest.jsonl`` (``batch.report`` writes it)."""
        folder, found = self.task_folder(), location_parts(uri)
        return folder is not None and found == (folder[0], folder[1], (*folder[2], "manifest.jsonl"))


#: RunComfy statuses (of a job or a batch line) that end without outputs.
ENDED_WITHOUT_OUTPUTS = frozenset({"failed", "cancelled", "invalid", "unknown", "not_submitted"})


def location_parts(uri: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``(scheme, bucket or host, path segments)`` of a storage location; None if it is not one.

    A plain path and ``file://`` are the same place; ``.`` and empty segments are dropped, and a
    location with ``..`` anywhere is not one (a climb out of a folder is never served).
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if "://" not in uri:
        scheme, netloc, path = "file", "", uri
    else:
        scheme, netloc, path = parts.scheme.lower(), parts.netloc, parts.path
        if scheme == "local":
            scheme = "file"
        if scheme == "file" and netloc not in ("", "localhost"):
            return None
        if scheme == "file":
            netloc = ""
    if parts.query or parts.fragment or "\\" in path or "\x00" in path:
        return None
    segments = tuple(s for s in path.split("/") if s not in ("", "."))
    if ".." in segments:
        return None
    return scheme, netloc, segments


def file_name(location: str) -> str:
    """The file name a person knows a picture by (``street.png``), or ``""`` for an inline one."""
    if location.startswith("data:"):
        return ""
    try:
        path = urlsplit(location).path if "://" in location else location
    except ValueError:
        return ""
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])[:80]


def extension(uri: str) -> str:
    """The lower-case extension of ``uri``'s file name (query and fragment ignored), or ``""``."""
    try:
        name = (urlsplit(uri).path if "://" in uri else uri).rsplit("/", 1)[-1]
    except ValueError:  # a malformed URL (``https://[::1/x.png``) has no file name worth trusting
        return ""
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def item_from_result(item: Item, result: Any) -> None:
    """Fill ``item`` from a task's return value (or a manifest line): outputs, copies, cost."""
    if not isinstance(result, Mapping):
        return
    item.request_id = _text(result.get("request_id")) or item.request_id
    item.model_id = _text(result.get("model_id")) or item.model_id
    item.status = _text(result.get("status")) or item.status
    item.outputs = [url for url in result.get("outputs") or [] if isinstance(url, str)]
    item.stored = [dict(copy) for copy in result.get("stored") or [] if isinstance(copy, Mapping)]
    cost = result.get("cost_usd", result.get("cost"))
    item.cost_usd = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None
    item.error = _text(result.get("error")) or item.error
    item.manifest = next((result[k] for k in MANIFEST_KEYS if isinstance(result.get(k), str)), None)
    item.counts = {k: result[k] for k in ("total", "succeeded", "failed") if isinstance(result.get(k), int)}


def item_from_manifest_line(parent: Item, index: int, record: Mapping[str, Any]) -> Item:
    """One line of a batch manifest as an ``Item`` of the batch's task instance."""
    item = Item(parent.dag_id, parent.run_id, parent.task_id, parent.map_index, item=index)
    item.model_id = _text(record.get("model_id")) or parent.model_id
    item.state = parent.state
    item.output_dir = parent.output_dir
    item_from_result(item, record)
    given = record.get("input")
    if isinstance(given, Mapping):
        item.inputs = input_images(given)
        item.prompt = _text(given.get("prompt"))
    elif isinstance(given, str):
        item.inputs = [given]
    elif isinstance(given, list):
        item.inputs = [v for v in given if isinstance(v, str)]
    item.manifest = None
    return item


# -- the metadata DB ----------------------------------------------------------------------------


def load_items(
    session: Session,
    dag_id: str,
    run_id: str,
    task_id: str | None = None,
    map_index: int | None = None,
) -> list[Item]:
    """The RunComfy task instances of a DAG run (or of one task), in task and map-index order.

    Four indexed queries whatever the number of task instances: the run's id, its RunComfy
    XComs (``request_id``, ``manifest`` and the return value), the task instances' states
    and their rendered fields. A task instance
    counts as a RunComfy one when it pushed a ``request_id`` or returned a RunComfy result.
    """
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    def of_task(query: Any, model: Any) -> Any:
        if task_id is not None:
            query = query.where(model.task_id == task_id)
        if map_index is not None:
            query = query.where(model.map_index == map_index)
        return query

    def scoped(query: Any, model: Any) -> Any:
        return of_task(query.where(model.dag_id == dag_id, model.run_id == run_id), model)

    from airflow.models.dagrun import DagRun

    # XComs by the run's id: the prefix of their primary key, whatever the number of tasks.
    dag_run_id = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run_id is None:
        return []
    query = select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value).where(
        XComModel.dag_run_id == dag_run_id, XComModel.key.in_(("request_id", "return_value", "manifest"))
    )
    xcoms = session.execute(of_task(query, XComModel)).all()
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for row_task, row_index, key, value in xcoms:
        found.setdefault((row_task, row_index), {})[key] = XComModel.deserialize_value(_Row(value))
    keys = {key for key, values in found.items() if _is_runcomfy(values)}
    if not keys:
        return []
    wanted_tasks = sorted({task for task, _ in keys})
    states = {
        (row.task_id, row.map_index): row
        for row in session.execute(
            scoped(
                select(TI.task_id, TI.map_index, TI.state, TI.try_number, TI.operator),
                TI,
            ).where(TI.task_id.in_(wanted_tasks))
        ).all()
    }
    rendered = {
        (row.task_id, row.map_index): row.rendered_fields
        for row in session.execute(
            scoped(select(RTIF.task_id, RTIF.map_index, RTIF.rendered_fields), RTIF).where(
                RTIF.task_id.in_(wanted_tasks)
            )
        ).all()
    }
    items = []
    for key in sorted(keys):
        row = states.get(key)
        item = Item(dag_id, run_id, key[0], key[1])
        if row is not None:
            item.state, item.try_number, item.operator = _text(row.state), row.try_number, row.operator
        values = found[key]
        item.request_id = _text(values.get("request_id"))
        item_from_result(item, values.get("return_value"))
        # A batch pushes its manifest's URI before it fails or returns.
        item.manifest = item.manifest or _text(values.get("manifest"))
        fields = rendered.get(key) or {}
        if isinstance(fields, Mapping):
            item.inputs = input_images(fields)
            item.prompt = _text(fields.get("prompt")) or _text(_mapping(fields.get("input")).get("prompt"))
            item.model_id = item.model_id or _text(fields.get("model_id"))
            item.output_dir = _text(fields.get("output_dir"))
        item.model_id = item.model_id or _LEGACY_MODEL_OF_OPERATOR.get(item.operator or "")
        items.append(item)
    return items


#: The model of a typed operator's task that ran before typed operators rendered ``model_id``
#: (0.1.0 among them) and failed before returning one. Frozen: a task of today renders its ``model_id``
#: whatever its operator, so a new typed operator is never added here.
_LEGACY_MODEL_OF_OPERATOR = {
    "FluxKontextProEditOperator": "blackforestlabs/flux-1-kontext/pro/edit",
    "NanoBananaEditOperator": "google/nano-banana/edit",
}


def _is_runcomfy(values: Mapping[str, Any]) -> bool:
    result = values.get("return_value")
    if (
        isinstance(result, Mapping)
        and "request_id" in result
        and ("outputs" in result or "model_id" in result)
    ):
        return True
    if isinstance(result, Mapping) and any(isinstance(result.get(k), str) for k in MANIFEST_KEYS):
        return True
    return isinstance(values.get("request_id"), str) or isinstance(values.get("manifest"), str)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _Row:
    """What ``XComModel.deserialize_value`` reads: an object with a ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value
