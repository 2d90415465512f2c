"""A daily RunComfy spend report for ops: what the batches of the last day cost, per model.

Every ``RunComfyBatchOperator`` run leaves a ``manifest.jsonl`` under its
``output_dir``: one line per item with its ``status``, ``cost_usd`` (what
RunComfy said it cost) and ``error``; beside it, the header of the batch's
ledger names the model and why the batch stopped (budget, balance). Once a day
this DAG reads the manifests written under ``manifests_root`` in the last
``since_hours`` hours and writes, under ``{manifests_root}/_spend/``:

- ``spend-<date>.json``: per model the items, successes, failures, invalid
  items, items not submitted, and the spend in USD (``cost_usd`` summed; items RunComfy gave no
  cost for are counted in ``unpriced_items``), and per manifest the same;
- ``spend-<date>.png``: a small bar chart of the spend per model, the budget
  as a red line.

**It fails loudly** (after writing both files) when a budget was hit: a batch
stopped by its ``max_cost_usd`` or refused for lack of balance (RunComfy error
400002), or the day's total over the ``budget_usd`` param. A failed run is what
pages the on-call person; the report says which batch and why.

It asks nothing of RunComfy: it only reads files, so it costs nothing to run.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, Param, task

from airflow_provider_runcomfy.compat import AirflowFailException

#: Manifest lines over this size are skipped: a report must not choke on one odd file.
MAX_LINE_CHARS = 1_000_000

with DAG(
    dag_id="runcomfy_spend_report",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example", "spend"],
    params={
        "manifests_root": Param(
            "file:///tmp/runcomfy-batch-enrichment",
            type="string",
            description="Where your batches keep their outputs (their output_dir): a path or a URL.",
        ),
        "since_hours": Param(24, type="number", minimum=0, description="Read manifests this recent."),
        "budget_usd": Param(
            None, type=["null", "number"], minimum=0, description="Fail when the spend is over this."
        ),
    },
) as dag:

    @task
    def read_manifests(params: dict[str, Any]) -> list[dict[str, Any]]:
        """One small summary per recent manifest (nothing per item goes to XCom)."""
        root = ObjectStoragePath(params["manifests_root"])
        since = time.time() - float(params["since_hours"]) * 3600
        summaries = []
        for path in sorted(root.rglob("manifest.jsonl"), key=str) if root.exists() else []:
            if "/_spend/" in str(path) or _modified(path) < since:
                continue
            with path.open("r") as lines:  # streamed: a manifest of 100,000 items is never all in memory
                summaries.append(summarize_manifest(str(path), lines, batch_header(path)))
        print(f"{len(summaries)} manifest(s) under {root} from the last {params['since_hours']} h.")
        return summaries

    @task
    def write_report(summaries: list[dict[str, Any]], **context: Any) -> dict[str, Any]:
        """Write the JSON report and the chart, then fail if a budget was hit."""
        params = context["params"]
        # A manual run may have no logical date (Airflow 3): then the report is today's.
        ds = context.get("ds") or datetime.now(UTC).date().isoformat()
        report = build_report(summaries, params.get("budget_usd"), ds)
        folder = ObjectStoragePath(params["manifests_root"]) / "_spend"
        folder.mkdir(parents=True, exist_ok=True)
        json_path, png_path = folder / f"spend-{ds}.json", folder / f"spend-{ds}.png"
        json_path.write_text(json.dumps(report, indent=2))
        with png_path.open("wb") as sink:
            draw_chart(sink, report)
        for model in report["models"]:
            print(f"{model['model_id']}: ${model['cost_usd']:.4f} over {model['items']} item(s)")
        print(f"Total ${report['total_cost_usd']:.4f}; report {json_path}, chart {png_path}")
        if report["budget_hits"]:
            raise AirflowFailException(
                "RunComfy budget hit: " + "; ".join(report["budget_hits"]) + f". See {json_path}."
            )
        return {"total_cost_usd": report["total_cost_usd"], "report": str(json_path), "chart": str(png_path)}

    write_report(read_manifests())


# -- reading manifests --------------------------------------------------------------------------


def _modified(path: ObjectStoragePath) -> float:
    info = path.stat()
    value = getattr(info, "st_mtime", None) or info.get("mtime") or info.get("LastModified")
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


def batch_header(manifest: ObjectStoragePath) -> dict[str, Any]:
    """The first line of the batch's ledger checkpoint beside its manifest: its model, why it stopped.

    ``RunComfyBatchOperator`` keeps its ledger in ``_ledger/`` next to ``manifest.jsonl`` and
    folds it into ``checkpoint.jsonl`` when it writes the manifest; the header line names the
    model and, in ``meta.stopped``, whether the batch stopped for its budget or the balance.
    """
    checkpoint = manifest.parent / "_ledger" / "checkpoint.jsonl"
    try:
        with checkpoint.open("r") as file:
            header = json.loads(file.readline(MAX_LINE_CHARS) or "{}")
    except (OSError, ValueError):
        return {}
    return header if isinstance(header, dict) else {}


def summarize_manifest(
    uri: str, lines: Iterable[str], header: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Counts and spend per model of one manifest, and whether its batch hit a budget."""
    header = header or {}
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    models: dict[str, dict[str, Any]] = defaultdict(_empty_counts)
    stopped_by_budget, out_of_balance = meta.get("stopped") == "budget", meta.get("stopped") == "balance"
    batch_model = str(header.get("model_id") or "unknown model")
    for line in lines:
        if not line.strip() or len(line) > MAX_LINE_CHARS:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        status, error = str(item.get("status") or ""), str(item.get("error") or "")
        counts = models[str(item.get("model_id") or batch_model)]
        counts["items"] += 1
        counts["succeeded"] += status == "succeeded"
        counts["failed"] += status in ("failed", "cancelled", "unknown")
        counts["invalid"] += status == "invalid"
        counts["not_submitted"] += status == "not_submitted"
        cost = item.get("cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            counts["cost_usd"] += float(cost)
        elif item.get("request_id"):
            counts["unpriced_items"] += 1
        stopped_by_budget |= "max_cost_usd" in error or status == "stopped_by_budget"
        out_of_balance |= "400002" in error or "no balance" in error
    return {
        "manifest": uri,
        "models": dict(models),
        "stopped_by_budget": stopped_by_budget,
        "out_of_balance": out_of_balance,
    }


def _empty_counts() -> dict[str, Any]:
    counts = ("items", "succeeded", "failed", "invalid", "not_submitted", "unpriced_items")
    return {**dict.fromkeys(counts, 0), "cost_usd": 0.0}


def build_report(summaries: list[dict[str, Any]], budget_usd: float | None, day: str) -> dict[str, Any]:
    """The day's report: totals per model (most expensive first), the manifests, the budgets hit."""
    totals: dict[str, dict[str, Any]] = defaultdict(_empty_counts)
    hits = []
    for summary in summaries:
        for model_id, counts in summary["models"].items():
            for key, value in counts.items():
                totals[model_id][key] += value
        if summary["stopped_by_budget"]:
            hits.append(f"{summary['manifest']} was stopped by its max_cost_usd")
        if summary["out_of_balance"]:
            hits.append(f"{summary['manifest']} ran out of RunComfy balance (error 400002): top up")
    models = sorted(({"model_id": m, **c} for m, c in totals.items()), key=lambda m: -m["cost_usd"])
    total = round(sum(m["cost_usd"] for m in models), 6)
    if budget_usd is not None and total > float(budget_usd):
        hits.append(f"the total ${total:.4f} is over budget_usd=${float(budget_usd):.4f}")
    return {
        "day": day,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_cost_usd": total,
        "budget_usd": budget_usd,
        "models": models,
        "manifests": summaries,
        "budget_hits": hits,
    }


# -- the chart: pypng and a 3x5 pixel font, nothing else -------------------------------------------

#: Each glyph: 5 rows of 3 pixels, as 15 bits (hex) read left to right, top to bottom.
_GLYPHS = (
    "2BED 6BAE 3923 6B6E 79A7 79A4 396B 5BED 7497 126A 5BAD 4927 5FED 6B6D 2B6A 6BA4 2B73 6BAD 388E "
    "7492 5B6F 5B6A 5BFD 5AAD 5A92 72A7 7B6F 2C97 62A7 628E 5BC9 798E 39EF 7292 7BEF 7BCE 3C9E 0002 "
    "12A4 01C0 0007 0410 0000"
)
FONT = dict(
    zip(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$./-_: ",
        map(partial(int, base=16), _GLYPHS.split()),
        strict=True,
    )
)
SCALE, ROW, LABEL_CHARS, BAR_WIDTH = 2, 18, 36, 260
INK, BAR, TOTAL_BAR, BUDGET, PAPER = (
    (33, 33, 33),
    (63, 81, 181),
    (120, 144, 156),
    (198, 40, 40),
    (255, 255, 255),
)


def draw_chart(sink: Any, report: dict[str, Any]) -> None:
    """A bar per model (and one for the total), labelled with the model and its spend."""
    rows = [("TOTAL", report["total_cost_usd"], TOTAL_BAR)]
    rows += [(m["model_id"], m["cost_usd"], BAR) for m in report["models"]]
    budget = report["budget_usd"]
    scale = max([report["total_cost_usd"], float(budget or 0), 1e-9])
    label_px = LABEL_CHARS * 4 * SCALE
    width, height = label_px + BAR_WIDTH + 12 * 4 * SCALE + 16, ROW * (len(rows) + 1) + 8
    pixels = [[PAPER] * width for _ in range(height)]
    _text(pixels, 4, 4, f"RUNCOMFY SPEND {report['day']}")
    for i, (label, cost, colour) in enumerate(rows, start=1):
        top = i * ROW + 4
        _text(pixels, 4, top + 2, label[-LABEL_CHARS:])
        length = round(BAR_WIDTH * cost / scale)
        for y in range(top, top + ROW - 4):
            pixels[y][label_px + 4 : label_px + 4 + length] = [colour] * length
        _text(pixels, label_px + 8 + length, top + 2, f"${cost:.4f}")
    if budget is not None:
        x = label_px + 4 + round(BAR_WIDTH * float(budget) / scale)
        for y in range(ROW, height - 4):
            pixels[y][min(x, width - 1)] = BUDGET
    import png

    flat = [[channel for pixel in row for channel in pixel] for row in pixels]
    png.Writer(width, height, greyscale=False).write(sink, flat)


def _text(pixels: list[list[tuple[int, int, int]]], x: int, y: int, text: str) -> None:
    for n, char in enumerate(text.upper()):
        bits = FONT.get(char, FONT["-"])
        for cell in range(15):
            if bits >> (14 - cell) & 1:
                left, top = x + (n * 4 + cell % 3) * SCALE, y + (cell // 3) * SCALE
                for dy in range(SCALE):
                    row = pixels[top + dy] if top + dy < len(pixels) else None
                    if row is not None and left + SCALE <= len(row):
                        row[left : left + SCALE] = [INK] * SCALE
