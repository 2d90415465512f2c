"""Rebuilding a damaged ledger from what is still known: the explicit way back after a crash.

A damaged ledger stops the task (``LedgerDamagedError``); nothing reads it as "nothing
happened". When the user clears the task with ``on_damaged_ledger="reconcile"``, this
module rebuilds it from three witnesses, most trusted first:

1. the records still readable in the damaged files (every line that parses);
2. ``manifest.jsonl`` (request ids, statuses, kept copies), when a worker part wrote one;
3. the kept outputs, named ``{index:06d}_{request_id}_{n}.{ext}`` (``batch.copies``).

Per item of the current inputs: a success with its copies stays a success; an item with
a known request id is re-attached (the wait reads ``/result`` again: nothing is paid);
an invalid item stays invalid; every other item -- one the witnesses cannot account for
-- becomes ``unknown``: it is not paid for again unless the user also says
``on_unknown_submit="resubmit"``. The damaged files are moved to ``_ledger/damaged-<time>/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch import ledger as L

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.batch.items import BatchItem

_OUTPUT_NAME = re.compile(r"^(\d{6})_([A-Za-z0-9_-]{1,128})_(\d+)\.[A-Za-z0-9]+$")


@dataclass
class ReconcileReport:
    """What the rebuilt ledger says, and where the damaged files went."""

    succeeded: int = 0
    reattached: int = 0
    invalid: int = 0
    unknown: int = 0
    moved_to: str = ""
    witnesses: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.succeeded} succeeded (copies kept), {self.reattached} re-attached by request id, "
            f"{self.invalid} invalid, {self.unknown} unknown (not paid again); from "
            f"{', '.join(self.witnesses) or 'no witness'}; damaged files moved to {self.moved_to}"
        )


def reconcile(folder: ObjectStoragePath, model_id: str, items: Sequence[BatchItem]) -> ReconcileReport:
    """Rebuild ``folder``'s ledger for ``items`` (see the module's docstring); the damaged files are kept aside."""
    report = ReconcileReport()
    ledger_dir = folder / L.LEDGER_DIR
    fs = ledger_dir.fs
    salvage = L.Ledger(folder, model_id)
    names = _ledger_files(fs, ledger_dir.path)
    for name in names:
        for line in _readable_lines(fs, name):
            if "meta" in line and isinstance(line["meta"], dict) and "version" not in line:
                salvage.meta.update(line["meta"])
            elif "key" in line and "index" in line and "expect" not in line and "state" in line:
                salvage.items[str(line["key"])] = L.ItemRecord.from_json(line)  # a checkpoint line
            elif "key" in line:
                salvage._apply(line)
    if names:
        report.witnesses.append("readable ledger records")
    by_index = {item.index: item for item in items}
    manifest = _manifest_rows(folder, by_index)
    if manifest:
        report.witnesses.append("manifest.jsonl")
    outputs = _kept_outputs(folder, by_index)
    if outputs:
        report.witnesses.append("kept outputs")

    current = {item.key for item in items}
    records: dict[str, L.ItemRecord] = {
        key: record for key, record in salvage.items.items() if key not in current
    }
    for item in items:
        old = salvage.items.get(item.key)
        row = manifest.get(item.index)
        record = L.ItemRecord(key=item.key, index=item.index, paid_usd=old.spent_usd() if old else 0.0)
        if old is not None and old.state == L.SUCCEEDED and old.stored:
            record = old
            report.succeeded += 1
        elif row is not None and row.get("status") == "succeeded" and row.get("stored"):
            record.state, record.request_id, record.stored = L.SUCCEEDED, row.get("request_id"), row["stored"]
            record.outcome = {"status": "succeeded", "outputs": row.get("outputs") or []}
            if isinstance(row.get("cost_usd"), (int, float)):
                record.outcome["cost_usd"] = float(row["cost_usd"])
            record.paid_usd = 0.0
            report.succeeded += 1
        elif request_id := _request_id(old, row, outputs.get(item.index)):
            record.state, record.request_id, record.submitted_at = L.SUBMITTED, request_id, time.time()
            record.attempt = max(1, old.attempt if old else 1)
            record.paid_usd = old.paid_usd if old else 0.0
            report.reattached += 1
        elif old is not None and old.state == L.INVALID:
            record = old
            report.invalid += 1
        else:
            record.state = L.UNKNOWN
            record.error = (
                f"The ledger was damaged and rebuilt (on_damaged_ledger='reconcile'): nothing left says whether "
                f"item {item.index} was submitted, so it is not paid for again. Clear the task with "
                "on_unknown_submit='resubmit' to pay for it anyway."
            )
            report.unknown += 1
        records[item.key] = record

    report.moved_to = _move_aside(fs, ledger_dir.path, names)
    rebuilt = L.Ledger(folder, model_id)
    rebuilt.items = records
    rebuilt.meta = {**salvage.meta, "try_id": None, "reconciled_at": time.time()}
    rebuilt.append([{"meta": {"reconciled": report.describe()}}])
    rebuilt.compact(force=True)
    return report


def _ledger_files(fs: Any, root: str) -> list[str]:
    try:
        names = [str(n) for n in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    wanted = []
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base in (L.CHECKPOINT, L.HEAD) or (base.startswith(("seg-", "done-")) and base.endswith(".jsonl")):
            wanted.append(name)
    # The archive and the checkpoint first (their records are disjoint), then the segments in order.
    return sorted(wanted, key=lambda n: (_rank(n), L._seq_of(n), n))


def _rank(name: str) -> int:
    base = name.rsplit("/", 1)[-1]
    return 0 if base.startswith("done-") else 1 if base == L.CHECKPOINT else 2


def _readable_lines(fs: Any, name: str) -> list[dict[str, Any]]:
    try:
        with fs.open(name, "rb") as file:
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue  # the cut or corrupt part: whatever it said is not known
        if isinstance(data, dict) and "end" not in data:
            lines.append(data)
    return lines


def _manifest_rows(folder: ObjectStoragePath, by_index: dict[int, BatchItem]) -> dict[int, dict[str, Any]]:
    path = folder / "manifest.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    try:
        with path.fs.open(path.path, "rb") as file:
            text = file.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
            index = int(row["index"])
        except (ValueError, KeyError, TypeError):
            continue
        item = by_index.get(index)
        if item is not None and row.get("input") == item.manifest_input():  # the same input, not a new one
            rows[index] = row
    return rows


def _kept_outputs(folder: ObjectStoragePath, by_index: dict[int, BatchItem]) -> dict[int, str]:
    path = folder / "outputs"
    try:
        names = [str(n).rsplit("/", 1)[-1] for n in path.fs.ls(path.path, detail=False)]
    except (FileNotFoundError, OSError):
        return {}
    found: dict[int, str] = {}
    for name in names:
        match = _OUTPUT_NAME.match(name)
        if match and int(match.group(1)) in by_index:
            found[int(match.group(1))] = match.group(2)
    return found


def _request_id(old: L.ItemRecord | None, row: dict[str, Any] | None, from_outputs: str | None) -> str | None:
    for candidate in (old.request_id if old else None, (row or {}).get("request_id"), from_outputs):
        if isinstance(candidate, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", candidate):
            return candidate
    return None


def _move_aside(fs: Any, root: str, names: list[str]) -> str:
    aside = f"{root}/{L.DAMAGED_DIR}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    fs.makedirs(aside, exist_ok=True)
    for name in names:
        try:
            fs.mv(name, f"{aside}/{name.rsplit('/', 1)[-1]}")
        except FileNotFoundError:
            continue
    return aside
