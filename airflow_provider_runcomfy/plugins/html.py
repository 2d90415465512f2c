"""The outputs view's pages: plain HTML and CSS, no script, every value escaped.

The pages are shown in an iframe tab of Airflow's UI (and open on their own from
the extra link), so they carry their own small stylesheet that follows the
reader's light or dark preference. No JavaScript: filters and pages are links.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote, urlencode, urlsplit

import httpx

from airflow_provider_runcomfy.plugins.records import Item, extension

log = logging.getLogger(__name__)

#: Colours of Airflow's task states, so a state reads the same here as in the grid.
STATE_COLOURS = {
    "success": "#2e7d32",
    "failed": "#c62828",
    "running": "#0097a7",
    "deferred": "#7e57c2",
    "queued": "#757575",
    "scheduled": "#8d6e63",
    "up_for_retry": "#f9a825",
    "up_for_reschedule": "#26a69a",
    "upstream_failed": "#ef6c00",
    "skipped": "#ec407a",
    "removed": "#9e9e9e",
}

#: Shown where a picture cannot be (an expired URL, a host the API server cannot reach).
_MISSING = "Picture not available: its URL may have expired, or the API server cannot fetch it."

#: The one script of the pages: follow the theme chosen in Airflow's UI (kept in this origin's
#: ``localStorage`` under ``theme``) rather than the system's, so the tab matches the page around it.
THEME_SCRIPT = (
    "try{var t=localStorage.getItem('theme');"
    "if(t==='light'||t==='dark')document.documentElement.dataset.theme=t}catch(e){}"
)

#: Content-Security-Policy of the pages: their own pictures, inline style, the theme script only.
PAGE_CSP = (
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(THEME_SCRIPT.encode()).digest()).decode()}'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)

_LIGHT = """color-scheme: light; --bg: #fff; --fg: #1a202c; --muted: #64748b; --line: #e2e8f0;
  --card: #f8fafc; --frame: #eef2f6; --accent: #017cee; --warn-bg: #fff5f5; --warn-fg: #9b1c1c;"""
_DARK = """color-scheme: dark; --bg: #161d2d; --fg: #e2e8f0; --muted: #94a3b8; --line: #2f3a50;
  --card: #1b2335; --frame: #212a3d; --accent: #4fa3ff; --warn-bg: #3a1d24; --warn-fg: #feb2b2;"""

_CSS = (
    f":root {{ {_LIGHT} }}\n"
    f"@media (prefers-color-scheme: dark) {{ :root:not([data-theme=light]) {{ {_DARK} }} }}\n"
    f":root[data-theme=dark] {{ {_DARK} }}\n"
    """* { box-sizing: border-box; }
body { margin: 0; padding: 20px 24px 32px; background: var(--bg); color: var(--fg);
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
.head { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 14px; margin-bottom: 14px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; color: #fff; font-size: 12px;
  font-weight: 600; text-transform: capitalize; background: #757575; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 0 0 16px; padding: 12px 14px;
  border: 1px solid var(--line); border-radius: 8px; background: var(--card); }
.facts div { min-width: 0; } .facts dt { color: var(--muted); font-size: 11.5px; text-transform: uppercase;
  letter-spacing: .04em; } .facts dd { margin: 0; overflow-wrap: anywhere; }
.prompt { margin: 0 0 18px; padding: 10px 14px; border-left: 3px solid var(--accent); background: var(--card);
  border-radius: 0 8px 8px 0; white-space: pre-wrap; }
.error { margin: 0 0 18px; padding: 10px 14px; border-radius: 8px; background: var(--warn-bg);
  color: var(--warn-fg); white-space: pre-wrap; overflow-wrap: anywhere; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap: 18px; }
.column h2 { font-size: 13px; margin: 0 0 8px; color: var(--muted); text-transform: uppercase; letter-spacing: .05em; }
figure { margin: 0 0 14px; border: 1px solid var(--line); border-radius: 10px; overflow: hidden; background: var(--card); }
.frame { display: flex; align-items: center; justify-content: center; background: var(--frame);
  aspect-ratio: 4 / 3; overflow: hidden; }
.frame img, .frame video { position: relative; width: 100%; height: 100%; object-fit: contain; display: block; }
/* Drawn only when the picture fails to load (a replaced element has no ::after otherwise). */
.frame img::after { content: attr(data-missing); position: absolute; inset: 0; display: flex; align-items: center;
  justify-content: center; padding: 16px; text-align: center; background: var(--frame); color: var(--muted);
  font-size: 12.5px; }
.frame .none { color: var(--muted); font-size: 12.5px; padding: 12px; text-align: center; }
figcaption { padding: 8px 12px; font-size: 12.5px; color: var(--muted); display: flex; flex-wrap: wrap;
  gap: 4px 10px; justify-content: space-between; } figcaption b { color: var(--fg); font-weight: 600; }
.pills { display: flex; gap: 8px; margin: 0 0 14px; flex-wrap: wrap; }
.pill { padding: 4px 12px; border: 1px solid var(--line); border-radius: 999px; color: var(--fg); }
.pill.on { background: var(--accent); border-color: var(--accent); color: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; }
.tile { border: 1px solid var(--line); border-radius: 10px; overflow: hidden; background: var(--card); }
.tile .thumbs { display: grid; grid-template-columns: 1fr 1fr; gap: 1px; background: var(--line); }
.tile .thumbs .frame { aspect-ratio: 1 / 1; }
.tile .meta { padding: 8px 12px; font-size: 12.5px; display: flex; flex-direction: column; gap: 2px; }
.tile .meta .line { display: flex; justify-content: space-between; gap: 8px; align-items: center; min-width: 0; }
.tile .meta code { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }
.muted { color: var(--muted); }
.pager { display: flex; gap: 14px; align-items: center; margin-top: 18px; color: var(--muted); }
.empty { padding: 28px; text-align: center; color: var(--muted); border: 1px dashed var(--line); border-radius: 10px; }
.foot { margin-top: 22px; font-size: 12px; color: var(--muted); }
.note { margin: 0 0 18px; padding: 10px 14px; border-radius: 8px; border: 1px solid var(--accent);
  background: var(--card); white-space: pre-wrap; }
.summary { margin: 0 0 16px; } .summary .total { margin: 0 0 8px; font-size: 15px; }
.summary table { border-collapse: collapse; width: 100%; font-size: 13px; }
.summary th, .summary td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); }
.summary th { color: var(--muted); font-weight: 600; font-size: 11.5px; text-transform: uppercase; }
.summary .num { text-align: right; } .summary tr.bad td:first-child { border-left: 3px solid #c62828; }
.warn { color: var(--warn-fg); background: var(--warn-bg); border-radius: 6px; padding: 0 6px; font-weight: 600; }
.tile.bad { border-color: #c62828; }
.tile .meta .name { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.cost { margin-left: auto; margin-right: 8px; }
"""
)


def page(title: str, body: str) -> str:
    """A whole HTML document around ``body``."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style><script>{THEME_SCRIPT}</script></head>"
        f"<body>{body}"
        '<p class="foot">RunComfy outputs, served by the Airflow API server to users allowed to read '
        "this DAG. RunComfy's own URLs expire: keep copies with <code>output_dir</code>.</p>"
        "</body></html>"
    )


def badge(state: str | None) -> str:
    text = (state or "no state").replace("_", " ")
    colour = STATE_COLOURS.get(state or "", "#757575")
    return f'<span class="badge" style="background:{colour}">{escape(text)}</span>'


@dataclass(frozen=True)
class TaskSummary:
    """One RunComfy task instance of a run, for the gallery's table: counts, cost, why not shown."""

    item: Item
    counts: dict[str, int]
    cost_usd: float | None
    problem: str | None = None

    @property
    def failed_items(self) -> int:
        return int(self.counts.get("failed") or 0) if self.item.manifest else 0


def task_page(
    item: Item,
    *,
    prefix: str,
    items: Sequence[Item] = (),
    pages: str = "",
    parent: Item | None = None,
    summary: TaskSummary | None = None,
    note: str | None = None,
) -> str:
    """A task instance (or, with ``parent``, one line of a batch): facts, prompt, error, inputs beside outputs.

    For a batch task, its manifest's tiles; a batch with failed lines says so above them.
    ``note`` is what the page advises (a failed task whose job succeeded: clear it).
    """
    label = _label(item)
    facts = [("Model", escape(item.model_id or "—"))]
    if item.manifest:  # a batch: its counts, each line has its own request
        counts = summary.counts if summary else item.counts
        facts += [(name.capitalize(), str(count)) for name, count in counts.items()]
    else:
        status = escape(item.status or "—")
        if item.status_source == "runcomfy":
            status += ' <span class="muted">(asked RunComfy now: the task recorded none)</span>'
        facts += [("Request id", _code(item.request_id)), ("RunComfy status", status)]
    cost = summary.cost_usd if summary and summary.cost_usd is not None else item.cost_usd
    if cost is not None:
        facts.append(("Cost", _money(cost)))
    if item.try_number and parent is None:
        facts.append(("Try", str(item.try_number)))
    if item.manifest:
        facts.append(
            ("Manifest", f'<a href="{_manifest_href(prefix, item)}">{escape(_short(item.manifest))}</a>')
        )
    back = (
        f'<a href="{_href(prefix, "outputs", item.dag_id, item.run_id, item.task_id, map_index=item.map_index)}">'
        "← the whole batch</a>"
        if parent is not None
        else f'<a href="{_gallery_href(prefix, item)}">All RunComfy tasks of this run →</a>'
    )
    body = [
        f'<div class="head">{badge(item.state)}<h1>{escape(label)}</h1>'
        f'<span class="muted">{escape(item.dag_id)} · {escape(item.run_id)}</span>{back}</div>',
        '<dl class="facts">' + "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>",
    ]
    if item.prompt:
        body.append(f'<p class="prompt">{escape(item.prompt)}</p>')
    if note:
        body.append(f'<p class="note">{escape(note)}</p>')
    if item.error:
        body.append(f'<p class="error">{escape(item.error[:2000])}</p>')
    elif item.failed and not note:
        body.append('<p class="error">The task failed: its Logs tab says why.</p>')
    if item.manifest:
        failed = summary.failed_items if summary else int(item.counts.get("failed") or 0)
        if failed:
            only = _href(
                prefix,
                "outputs",
                item.dag_id,
                item.run_id,
                item.task_id,
                map_index=item.map_index,
                show="failed",
            )
            body.append(
                f'<p class="error">{failed} item{"s" if failed != 1 else ""} of this batch did not succeed. '
                f'<a href="{only}">Show {"them" if failed != 1 else "it"}</a></p>'
            )
        body.append(pages or "")
        body.append(
            tiles(items, prefix=prefix, in_batch=True) if items else _empty("No lines of the manifest match.")
        )
        return page(f"RunComfy · {label}", "".join(body))
    inputs = [_figure(prefix, item, "input", n, src) for n, src in enumerate(item.inputs)]
    outputs = [_output_figure(prefix, item, n) for n in range(item.output_count)]
    if not outputs:
        waiting = item.state in (None, "queued", "scheduled", "running", "deferred", "up_for_retry")
        outputs = [_empty("Not finished yet: reload when the task is done." if waiting else "No outputs.")]
    body.append(
        '<div class="pair">'
        f'<section class="column"><h2>Inputs</h2>{"".join(inputs) or _empty("No input pictures.")}</section>'
        f'<section class="column"><h2>Outputs</h2>{"".join(outputs)}</section></div>'
    )
    return page(f"RunComfy · {label}", "".join(body))


def gallery_page(
    dag_id: str,
    run_id: str,
    items: Sequence[Item],
    *,
    prefix: str,
    show: str,
    counts: dict[str, int],
    pages: str,
    summaries: Sequence[TaskSummary] = (),
) -> str:
    """A DAG run: its cost and tasks at the top, then every job as a tile, filtered and paged."""
    body = (
        f'<div class="head"><h1>RunComfy outputs</h1><span class="muted">{escape(dag_id)} · '
        f"{escape(run_id)}</span></div>"
        + (run_summary(summaries, prefix=prefix) if summaries else "")
        + pills(show, counts, lambda s: _href(prefix, "gallery", dag_id, run_id, show=s))
        + (tiles(items, prefix=prefix) if items else _empty("No RunComfy task of this run matches."))
        + pages
    )
    return page(f"RunComfy · {run_id}", body)


def run_summary(summaries: Sequence[TaskSummary], *, prefix: str) -> str:
    """The run's total cost and a row per task: state, items, failed ones marked, cost."""
    costs = [s.cost_usd for s in summaries if s.cost_usd is not None]
    total = _money(sum(costs)) if costs else "—"
    partial = " (some tasks report no cost)" if costs and len(costs) < len(summaries) else ""
    rows = []
    for summary in summaries:
        item = summary.item
        link = _href(prefix, "outputs", item.dag_id, item.run_id, item.task_id, map_index=item.map_index)
        if item.manifest:
            done = summary.counts.get("succeeded", 0)
            jobs = f"{done} of {summary.counts.get('total', 0)} succeeded"
        else:
            jobs = escape(item.status or "—")
        failed = summary.failed_items
        mark = f' <span class="warn">⚠ {failed} failed</span>' if failed else ""
        if summary.problem:
            mark += f' <span class="warn">{escape(summary.problem)}</span>'
        rows.append(
            f'<tr{" class=bad" if failed or summary.problem else ""}><td><a href="{link}">{escape(_label(item))}</a></td>'
            f"<td>{badge(item.state)}</td><td>{jobs}{mark}</td>"
            f'<td class="num">{_money(summary.cost_usd) if summary.cost_usd is not None else "—"}</td></tr>'
        )
    return (
        f'<div class="summary"><p class="total">Run cost <b>{total}</b>{escape(partial)}</p>'
        '<table><thead><tr><th>Task</th><th>State</th><th>Jobs</th><th class="num">Cost</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def pills(show: str, counts: dict[str, int], href: Callable[[str], str]) -> str:
    links = []
    for name in ("all", "succeeded", "failed"):
        on = " on" if name == show else ""
        url = href(name)
        links.append(f'<a class="pill{on}" href="{url}">{name.capitalize()} · {counts.get(name, 0)}</a>')
    return '<nav class="pills">' + "".join(links) + "</nav>"


def tiles(items: Sequence[Item], *, prefix: str, in_batch: bool = False) -> str:
    """Tiles: the first input beside the first output (thumbnails), what it was, state, cost, request id.

    A tile names its input (the file name, or the start of the prompt), as a reviewer
    knows it; its link opens the job's own page (a batch line's: that line, inputs beside
    outputs), never the page the tile is on.
    """
    out = []
    for item in items:
        first_in = _thumb(prefix, item, "input", 0) if item.inputs else _none("no input picture")
        first_out = _thumb(prefix, item, "output", 0) if item.output_count else _none(_why_none(item))
        colour = "#2e7d32" if item.succeeded else ("#c62828" if item.failed else "#757575")
        label = f"#{item.item}" if in_batch and item.item is not None else _label(item)
        name = item.input_name
        more = f" +{item.output_count - 1}" if item.output_count > 1 else ""
        status = item.status or item.state or "unknown"
        cost = f'<span class="cost">{_money(item.cost_usd)}</span>' if item.cost_usd is not None else ""
        out.append(
            f'<div class="tile{" bad" if item.failed else ""}"><div class="thumbs">{first_in}{first_out}</div><div class="meta">'
            f'<div class="line"><span class="title"><span class="dot" style="background:{colour}"></span>'
            f"<b>{escape(label)}</b>{escape(more)}</span>"
            + f'<a href="{_item_href(prefix, item)}">details →</a></div>'
            + (f'<div class="line name" title="{escape(name)}">{escape(name)}</div>' if name else "")
            + f'<div class="line"><span class="muted">{escape(status)}</span>{cost}{_code(item.request_id)}</div>'
            + _tile_note(item)
            + "</div></div>"
        )
    return '<div class="grid">' + "".join(out) + "</div>"


def pager(page_number: int, has_next: bool, href: Callable[[int], str]) -> str:
    parts = []
    if page_number > 1:
        parts.append(f'<a href="{href(page_number - 1)}">← previous</a>')
    parts.append(f"page {page_number}")
    if has_next:
        parts.append(f'<a href="{href(page_number + 1)}">next →</a>')
    return '<div class="pager">' + "".join(f"<span>{p}</span>" for p in parts) + "</div>"


def message_page(title: str, text: str) -> str:
    return page(title, f'<div class="head"><h1>{escape(title)}</h1></div>{_empty(escape(text))}')


# -- pieces --------------------------------------------------------------------------------------


def picture_href(prefix: str, item: Item, kind: str, n: int, size: str | None = None) -> str:
    """A picture, addressed by task instance and position (``size``: a thumbnail of it)."""
    path = "/".join(quote(str(p), safe="") for p in (item.dag_id, item.run_id, item.task_id, item.map_index))
    query = {k: v for k, v in (("item", item.item), ("size", size)) if v is not None}
    return f"{prefix}/picture/{path}/{kind}/{n}" + (f"?{urlencode(query)}" if query else "")


def _figure(prefix: str, item: Item, kind: str, n: int, source: str, note: str = "") -> str:
    where = "inline picture" if source.startswith("data:") else _short(source)
    return (
        f"<figure>{_thumb(prefix, item, kind, n, source, size='view')}"
        f"<figcaption><b>{kind.capitalize()} {n + 1}</b><span>{escape(note or where)}</span></figcaption></figure>"
    )


def _output_figure(prefix: str, item: Item, n: int) -> str:
    source = item.output_source(n)
    if source is None:
        return ""
    if source[0] == "stored":
        copy = item.stored[n]
        size = copy.get("bytes")
        sha = str(copy.get("sha256") or "")[:12]
        note = f"kept copy · {_size(size)}" + (f" · sha256 {sha}…" if sha else "")
        return _figure(prefix, item, "output", n, source[1], note)
    return _figure(prefix, item, "output", n, source[1], f"RunComfy URL · {_short(source[1])}")


def _thumb(prefix: str, item: Item, kind: str, n: int, source: str | None = None, size: str = "thumb") -> str:
    """A framed thumbnail (or video) linking to the picture full size; a placeholder when it cannot be.

    Pictures the view will not fetch (a malformed URL, a storage path named as an input)
    are a placeholder with the reason, decided here: the page never waits on them or fails.
    """
    if source is None:
        found = item.output_source(n) if kind == "output" else None
        source = found[1] if found else (item.inputs[n] if kind == "input" and n < len(item.inputs) else "")
    refused = not_shown(source, kind)
    if refused:
        log.info("RunComfy view: %s %s of %s shown as a placeholder: %s", kind, n, item.task_id, refused)
        return _none(f"{_short(source)}: {refused}")
    href = picture_href(prefix, item, kind, n)
    if _is_video(source):
        media = f'<video src="{href}" preload="none" muted controls></video>'
    else:
        small = picture_href(prefix, item, kind, n, size)
        media = f'<img src="{small}" alt="" data-missing="{_MISSING}" loading="lazy">'
    return (
        f'<a class="frame" href="{href}" target="_blank" rel="noopener" '
        f'aria-label="{kind} {n + 1}, full size">{media}</a>'
    )


def not_shown(source: str, kind: str) -> str | None:
    """Why a picture is not fetched at all (a placeholder instead), or None."""
    if source.startswith("data:"):
        return None
    try:
        parts = urlsplit(source)
        if parts.scheme in ("http", "https"):
            parts.port  # noqa: B018 -- raises on a port that is not a number
            if not parts.hostname:
                return "not a valid URL"
            httpx.URL(source)
            return None
    except (ValueError, httpx.InvalidURL):
        return "not a valid URL"
    if kind == "input":
        return "a storage path named as an input is not shown"
    return None


def _is_video(source: str) -> bool:
    return extension(source) in ("mp4", "webm", "mov")


def _label(item: Item) -> str:
    label = item.task_id + (f" [{item.map_index}]" if item.map_index >= 0 else "")
    return f"{label} · #{item.item}" if item.item is not None else label


def _money(value: float) -> str:
    return f"${value:,.4f}".rstrip("0").rstrip(".") if value else "$0"


def _item_href(prefix: str, item: Item) -> str:
    return _href(
        prefix, "outputs", item.dag_id, item.run_id, item.task_id, map_index=item.map_index, item=item.item
    )


def _tile_note(item: Item) -> str:
    if item.error:
        return f'<div class="muted" title="{escape(item.error)}">{escape(item.error[:140])}</div>'
    if item.failed:
        return '<div class="muted">The task failed: its Logs tab says why.</div>'
    return ""


def _none(text: str) -> str:
    return f'<div class="frame"><span class="none">{escape(text)}</span></div>'


def _why_none(item: Item) -> str:
    if item.failed:
        return "failed"
    return "no output yet" if item.status != "succeeded" else "no output"


def _empty(html_text: str) -> str:
    return f'<div class="empty">{html_text}</div>'


def _code(value: str | None) -> str:
    return f"<code>{escape(value)}</code>" if value else "—"


def _short(location: str) -> str:
    """A location without its query (signed URLs carry credentials) and shortened for a caption."""
    if location.startswith("data:"):
        return "inline picture"
    try:
        parts = urlsplit(location)
        text = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else location
    except ValueError:  # malformed (``https://[::1/x.png``): shown cut before any query
        text = location.split("?", 1)[0]
    return text if len(text) <= 64 else f"{text[:28]}…{text[-32:]}"


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "size unknown"
    size = float(value)
    for unit in ("bytes", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _href(
    prefix: str, view: str, dag_id: str, run_id: str, task_id: str | None = None, **query: object
) -> str:
    parts = [dag_id, run_id] + ([task_id] if task_id is not None else [])
    path = "/".join(quote(str(p), safe="") for p in parts)
    args = {k: v for k, v in query.items() if v is not None}
    return f"{prefix}/{view}/{path}" + (f"?{urlencode(args)}" if args else "")


def _gallery_href(prefix: str, item: Item) -> str:
    return _href(prefix, "gallery", item.dag_id, item.run_id)


def _manifest_href(prefix: str, item: Item) -> str:
    return _href(prefix, "manifest", item.dag_id, item.run_id, item.task_id, map_index=item.map_index)


def view_href(
    prefix: str, view: str, dag_id: str, run_id: str, task_id: str | None = None, **query: object
) -> str:
    """The URL of one of the views (``outputs``, ``gallery``) with its query."""
    return _href(prefix, view, dag_id, run_id, task_id, **query)
