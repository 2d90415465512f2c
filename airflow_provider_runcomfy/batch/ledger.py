"""The durable per-item ledger of a batch: what was meant, what was paid for, what came of it.

A batch task instance keeps one ledger under its own folder of ``output_dir``::

    {task folder}/_ledger/checkpoint.jsonl      every item's last known record
    {task folder}/_ledger/seg-<seq>-<rand>.jsonl events written since the checkpoint

Every write is a new object written whole (part file, then renamed): object stores
have no append, and a reader never sees half an event. Events are applied in
``seq`` order onto the checkpoint; ``compact()`` folds them into a new checkpoint
and deletes them. So the ledger survives the death of the worker, of the
triggerer, retries and clears, and the metadata DB holds none of it.

**The order that keeps money safe.** An item's ``intent`` is written before its
paid submit and its ``request_id`` right after the answer (``Ledger.append`` returns
once the object is stored). A later try that finds an intent without a request id
cannot know whether RunComfy created the job -- RunComfy has no idempotency key and
no way to list requests -- so that item is ``unknown`` and is not submitted again
unless the operator says ``on_unknown_submit="resubmit"``. The window is the submit
itself: a worker killed while a POST is on the wire.

**Keys.** An item is known by its input fingerprint (model and input, sha256) and
its occurrence among identical inputs, not by its position: reordering the inputs
of a cleared task reuses every finished item, and a changed input is a new item.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.outputs.files import move_into_place, part_file, remove_quietly

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


#: Bumped if the record shape ever changes incompatibly.
LEDGER_VERSION = 1
LEDGER_DIR = "_ledger"
CHECKPOINT = "checkpoint.jsonl"

#: Item states as the ledger records them. ``ready``: checked, not submitted;
#: ``intent``: about to be submitted (no answer yet); ``submitted``: a job exists;
#: ``finished``: RunComfy gave its outcome, outputs not yet kept; the rest are final for a try.
READY = "ready"
INVALID = "invalid"
INTENT = "intent"
SUBMITTED = "submitted"
FINISHED = "finished"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
UNKNOWN = "unknown"

#: Segments after which the worker folds the events into a new checkpoint.
COMPACT_AFTER_SEGMENTS = 64


@dataclass
class ItemRecord:
    """What the ledger knows about one item (one line of the checkpoint).

    :param key: fingerprint and occurrence, ``<sha256[:32]>.<n>``.
    :param index: the item's position in the inputs when last seen.
    :param state: one of the states above.
    :param request_id: the RunComfy request, once submitted.
    :param submitted_at: ``time.time()`` of the submit's answer.
    :param outcome: the ``Outcome.to_event()`` of the job, once known.
    :param stored: the kept copies (``StoredOutput.as_dict()``), once made.
    :param error: why the item is not a success (invalid, failed, unknown...), when it is not.
    :param attempt: how many times the item was submitted (one per try at most).
    :param try_number: the task try that wrote the state.
    :param copy_failures: failed attempts at keeping the outputs.
    """

    key: str
    index: int
    state: str = READY
    request_id: str | None = None
    submitted_at: float | None = None
    outcome: dict[str, Any] | None = None
    stored: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    attempt: int = 0
    try_number: int | None = None
    copy_failures: int = 0

    def to_json(self) -> dict[str, Any]:
        data = {
            "key": self.key,
            "index": self.index,
            "state": self.state,
            "request_id": self.request_id,
            "submitted_at": self.submitted_at,
            "outcome": self.outcome,
            "stored": self.stored,
            "error": self.error,
            "attempt": self.attempt,
            "try_number": self.try_number,
            "copy_failures": self.copy_failures,
        }
        return {k: v for k, v in data.items() if v not in (None, [], 0) or k in ("key", "index", "state")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemRecord:
        return cls(
            key=str(data["key"]),
            index=int(data["index"]),
            state=str(data.get("state", READY)),
            request_id=data.get("request_id"),
            submitted_at=data.get("submitted_at"),
            outcome=data.get("outcome"),
            stored=list(data.get("stored") or []),
            error=data.get("error"),
            attempt=int(data.get("attempt") or 0),
            try_number=data.get("try_number"),
            copy_failures=int(data.get("copy_failures") or 0),
        )


class LedgerReadError(RuntimeError):
    """The ledger exists but cannot be read: never treated as "no ledger" (that would pay again)."""


class Ledger:
    """The ledger of one batch task instance in ``folder`` (its ``_ledger`` subfolder).

    :param folder: the task instance's folder in ``output_dir``.
    :param model_id: the model the batch runs; a ledger of another model is refused.
    """

    def __init__(self, folder: ObjectStoragePath, model_id: str) -> None:
        self.folder = folder
        self.dir = folder / LEDGER_DIR
        self.model_id = model_id
        self.items: dict[str, ItemRecord] = {}
        self.meta: dict[str, Any] = {}
        self._seq = 0
        self._segments: list[tuple[int, str]] = []  # (seq, path) written since the checkpoint
        self._checkpoint_seq = 0

    # -- reading --------------------------------------------------------------------------------

    def load(self) -> Ledger:
        """Read the checkpoint and apply the events written after it; an absent ledger is empty."""
        fs, root = self.dir.fs, self.dir.path
        try:
            names = [str(name) for name in fs.ls(root, detail=False)]
        except FileNotFoundError:
            names = []
        except OSError as error:
            raise LedgerReadError(f"Could not list the batch ledger at {self.dir}: {error}") from error
        checkpoint = next((n for n in names if n.rsplit("/", 1)[-1] == CHECKPOINT), None)
        if checkpoint is not None:
            self._read_checkpoint(fs, checkpoint)
        segments = sorted((_seq_of(n), n) for n in names if _is_segment(n))
        for seq, name in segments:
            self._seq = max(self._seq, seq)
            if seq <= self._checkpoint_seq:
                continue  # folded into the checkpoint already; a crash left it behind
            for event in _read_lines(fs, name):
                self._apply(event)
            self._segments.append((seq, name))
        for name in names:
            if name.endswith(".part"):  # a write cut short by a crash: it never counted
                remove_quietly(fs, name)
        return self

    def _read_checkpoint(self, fs: Any, name: str) -> None:
        lines = _read_lines(fs, name)
        if not lines:
            return
        header, records = lines[0], lines[1:]
        if header.get("version") != LEDGER_VERSION:
            raise LedgerReadError(
                f"The batch ledger {name} was written by another version ({header.get('version')}); "
                "finish or clear that batch with the provider version that started it."
            )
        if header.get("model_id") not in (None, self.model_id):
            raise LedgerReadError(
                f"The batch ledger {name} belongs to model {header.get('model_id')!r}, not {self.model_id!r}: "
                "the task's model changed. Clear the task with another output_dir, or delete the ledger "
                "folder once you are sure none of its jobs is still wanted."
            )
        self.meta = dict(header.get("meta") or {})
        self._checkpoint_seq = int(header.get("seq") or 0)
        self._seq = max(self._seq, self._checkpoint_seq)
        for data in records:
            record = ItemRecord.from_json(data)
            self.items[record.key] = record

    def _apply(self, event: dict[str, Any]) -> None:
        if "meta" in event:
            self.meta.update(event["meta"])
            return
        key = event.get("key")
        if not key:
            return
        record = self.items.get(key)
        if record is None:
            record = self.items[key] = ItemRecord(key=key, index=int(event.get("index", -1)))
        for name, value in event.items():
            if name != "key" and hasattr(record, name):
                setattr(record, name, value)

    # -- writing --------------------------------------------------------------------------------

    def append(self, events: Iterable[dict[str, Any]]) -> None:
        """Store ``events`` durably (one new object), then apply them; returns once they are stored.

        An event is a partial ``ItemRecord`` (``key`` plus the fields that changed) or
        ``{"meta": {...}}``. Raises ``OSError`` (or the store's error) when the write fails.
        """
        batch = list(events)
        if not batch:
            return
        self._seq += 1
        name = f"seg-{self._seq:09d}-{uuid.uuid4().hex[:6]}.jsonl"
        blob = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in batch).encode()
        path = self._write(name, blob)
        self._segments.append((self._seq, path))
        for event in batch:
            self._apply(event)

    def set_meta(self, **values: Any) -> None:
        """Record batch-wide facts (the try and when it started, the batch's deadline...)."""
        self.append([{"meta": values}])

    def compact(self, *, force: bool = False) -> None:
        """Fold the events into a new checkpoint and delete them (when there are many, or ``force``)."""
        if not self._segments or (len(self._segments) < COMPACT_AFTER_SEGMENTS and not force):
            return
        header = {
            "version": LEDGER_VERSION,
            "model_id": self.model_id,
            "seq": self._seq,
            "meta": self.meta,
            "written_at": time.time(),
        }
        lines = [json.dumps(header, separators=(",", ":"))]
        lines += [json.dumps(r.to_json(), separators=(",", ":")) for r in self.items.values()]
        self._write(CHECKPOINT, ("\n".join(lines) + "\n").encode())
        self._checkpoint_seq = self._seq
        fs = self.dir.fs
        for _, name in self._segments:
            remove_quietly(fs, name)
        self._segments.clear()

    def _write(self, name: str, blob: bytes) -> str:
        fs, root = self.dir.fs, self.dir.path
        fs.makedirs(root, exist_ok=True)
        target = f"{root}/{name}"
        with part_file(fs, target) as (part, file):
            file.write(blob)
        move_into_place(fs, part, target)
        return target

    # -- views ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ItemRecord]:
        return iter(self.items.values())

    def get(self, key: str) -> ItemRecord | None:
        return self.items.get(key)


def _is_segment(name: str) -> bool:
    # A write cut short leaves ``seg-....jsonl.<rand>.part``: never an event (it may be half a line).
    base = name.rsplit("/", 1)[-1]
    return base.startswith("seg-") and base.endswith(".jsonl")


def _seq_of(name: str) -> int:
    try:
        return int(name.rsplit("/", 1)[-1].split("-")[1])
    except (IndexError, ValueError):
        return 0


def _read_lines(fs: Any, name: str) -> list[dict[str, Any]]:
    try:
        with fs.open(name, "rb") as file:
            text = file.read().decode()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise LedgerReadError(f"Could not read the batch ledger file {name}: {error}") from error
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as error:
        raise LedgerReadError(
            f"The batch ledger file {name} is damaged ({error}). It is not treated as empty, since that "
            "could pay for jobs again: restore it, or move the ledger folder away once you are sure none "
            "of its jobs is still wanted."
        ) from error
