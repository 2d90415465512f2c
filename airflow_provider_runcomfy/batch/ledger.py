"""The durable per-item ledger of a batch: what was meant, what was paid for, what came of it.

A batch task instance keeps one ledger under its own folder of ``output_dir``::

    {task folder}/_ledger/checkpoint.jsonl       every item's last known record
    {task folder}/_ledger/seg-<seq>-<rand>.jsonl  events written since the checkpoint
    {task folder}/_ledger/head.json              the last sequence number written, and the checkpoint's
    {task folder}/_ledger/owner.json             the execution allowed to submit (``batch.owner``)

**Durable before paying.** Every write is a new object written whole (a part file,
then renamed); on a local disk the file and then its folder are fsynced before the
write returns, so the ``intent`` that allows a submit survives a host crash, not
only a process crash. Object-store puts are durable when they return. A store that
does not outlive the process (``memory://``) is refused before anything is paid.

**Damage is seen, never read as "nothing happened".** Each file ends with an ``end``
record holding its count of lines and the sha256 of everything before it; the head
says which sequence numbers must exist. An empty file, one cut at a line boundary or
mid-line, a corrupt one, a missing segment, checkpoint or head raise
``LedgerDamagedError`` naming the file and what is wrong. ``batch.reconcile`` is the
explicit way back.

**Events are compare-and-set.** An event may carry ``expect`` (the state, request id or
owner the record must have); one whose expectation does not hold is ignored, in memory
and on every later read alike. That is what keeps two executions that briefly overlap
(a worker Airflow believes lost, and the new try) from undoing each other's records.

**The order that keeps money safe.** An item's ``intent`` is written before its paid
submit and its ``request_id`` right after the answer. A later try that finds an intent
without a request id cannot know whether RunComfy created the job -- RunComfy has no
idempotency key and no way to list requests -- so that item is ``unknown`` and is not
submitted again unless the operator says ``on_unknown_submit="resubmit"``.

**Keys.** An item is known by its input fingerprint (model and input, sha256) and its
occurrence among identical inputs, not by its position.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow_provider_runcomfy.outputs.files import is_local, move_into_place, part_file, remove_quietly

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


#: Bumped when the record shape changes incompatibly (2: end records, head, compare-and-set events).
LEDGER_VERSION = 2
LEDGER_DIR = "_ledger"
CHECKPOINT = "checkpoint.jsonl"
HEAD = "head.json"
OWNER = "owner.json"
#: Where ``batch.reconcile`` moves the files it could not trust (kept for a person to look at).
DAMAGED_DIR = "damaged"

#: Item states as the ledger records them; ``batch.transitions`` says which change may follow which.
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
#: States no worker part changes again within a try: their records go to the archive (see ``Ledger``).
FINAL = frozenset({SUCCEEDED, INVALID, FAILED, CANCELLED, UNKNOWN})
#: Durations of finished jobs the checkpoint keeps for the batch's estimate of a job's run time.
DURATIONS_KEPT = 200

#: Schemes whose files do not outlive the process: a ledger there would forget what was paid.
NOT_DURABLE_PROTOCOLS = frozenset({"memory"})


@dataclass
class ItemRecord:
    """What the ledger knows about one item (one line of the checkpoint).

    :param key: fingerprint and occurrence, ``<sha256[:32]>.<n>``.
    :param index: the item's position in the inputs when last seen.
    :param state: one of the states above.
    :param request_id: the RunComfy request, once submitted.
    :param submitted_at: ``time.time()`` of the submit's answer.
    :param outcome: the job's outcome, kept lean (``batch.lean.slim_outcome``), once known.
    :param stored: the kept copies (``StoredOutput.as_dict()``), once made.
    :param error: why the item is not a success (invalid, failed, unknown...), cut short.
    :param attempt: how many times the item was submitted (one per try at most).
    :param try_number: the task try that wrote the state.
    :param copy_failures: failed attempts at keeping the outputs.
    :param owner: the execution that wrote the item's last intent (``batch.owner``).
    :param intent_at: ``time.time()`` of that intent.
    :param paid_usd: what earlier attempts of the item cost (kept when a new try resets it).
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
    owner: str | None = None
    intent_at: float | None = None
    paid_usd: float = 0.0

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
            "owner": self.owner,
            "intent_at": self.intent_at,
            "paid_usd": self.paid_usd,
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
            owner=data.get("owner"),
            intent_at=data.get("intent_at"),
            paid_usd=float(data.get("paid_usd") or 0.0),
        )

    def spent_usd(self) -> float:
        """What this item cost in every try: earlier attempts plus the current one's charge."""
        cost = (self.outcome or {}).get("cost_usd")
        now = float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else 0.0
        return self.paid_usd + now


class LedgerReadError(RuntimeError):
    """The ledger exists but cannot be read: never treated as "no ledger" (that would pay again)."""


class LedgerDamagedError(LedgerReadError):
    """A ledger file is empty, cut, corrupt or missing: the task stops before any submit.

    :param path: the damaged (or missing) file.
    :param what: what is wrong with it, in words.
    """

    def __init__(self, ledger_dir: str, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(
            f"The batch ledger {ledger_dir} is damaged: {path} {what}. Nothing was submitted: a damaged "
            "ledger is never read as 'nothing happened', since that could pay for jobs again. To resume, "
            "clear the task with on_damaged_ledger='reconcile': the ledger is rebuilt from the records still "
            "readable, manifest.jsonl and the kept outputs; an item it cannot account for is reported "
            "'unknown' and not paid for again (see docs/batch.md, 'A damaged ledger')."
        )


class LedgerNotDurableError(LedgerReadError):
    """The ledger's store does not outlive the process (``memory://``): refused before anything is paid."""


def check_durable(folder: ObjectStoragePath) -> None:
    """Refuse a store whose files vanish with the process: a retry there would pay for everything again."""
    protocols = folder.fs.protocol
    names = {protocols} if isinstance(protocols, str) else set(protocols)
    if names & NOT_DURABLE_PROTOCOLS:
        raise LedgerNotDurableError(
            f"output_dir {str(folder)!r} is kept in memory only: the batch's ledger (what was paid for) would "
            "vanish with this process, and a retry or a second worker would pay for every item again. Give "
            "an output_dir on a disk or an object store (file://, s3://, gs://...)."
        )


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
        self._segments: list[tuple[int, str]] = []  # (seq, path) read or written since the checkpoint
        self._checkpoint_seq = 0
        self.ignored = 0  # events whose expectation did not hold (another execution got there first)
        # Keys by state, built on first use and kept up to date by ``_apply``: a worker part asks
        # "which are in flight, which are ready" many times, and must not walk 100,000 records each time.
        self._by_state: dict[str, dict[str, None]] | None = None
        # The archive: the records of items in a final state, in ``done-<seq>.jsonl`` files the
        # checkpoint lists. A resumed worker part reads only the checkpoint's header for them (their
        # keys by state, their spend, recent run times): it costs what changed, not N records.
        self._archive_files: list[dict[str, Any]] = []
        self._archived: dict[str, str] = {}  # key -> state, while the archive's records are not read
        self._archived_spent = 0.0
        self._durations: list[float] = []
        self._read_all = False  # the archive was read (or there was none at load): see ``compact``
        self._archive: ArchiveView | None = None  # the archive's files, read for ``get`` (not parsed)

    # -- reading --------------------------------------------------------------------------------

    def load(self, *, archive: bool = True) -> Ledger:
        """Read the checkpoint and apply the events written after it; an absent ledger is empty.

        ``archive=False`` (a resumed worker part) leaves the archived records unread until one
        is asked for (``get``, ``keys_in`` of a final state, iteration); their keys, states and
        spend come from the checkpoint's header. Raises ``LedgerDamagedError`` when a file is
        empty, cut, corrupt or missing (an archive file that is not read is only checked to exist).
        """
        fs, root = self.dir.fs, self.dir.path
        try:
            names = [str(name) for name in fs.ls(root, detail=False)]
        except FileNotFoundError:
            names = []
        except OSError as error:
            raise LedgerReadError(f"Could not list the batch ledger at {self.dir}: {error}") from error
        by_base = {n.rsplit("/", 1)[-1]: n for n in names}
        head = self._read_head(fs, by_base.get(HEAD))
        folded: set[str] = set()
        checkpoint = by_base.get(CHECKPOINT)
        if checkpoint is not None:
            folded = self._read_checkpoint(fs, checkpoint, archive=archive)
        for entry in self._archive_files:
            if entry["name"] not in by_base:
                raise LedgerDamagedError(
                    str(self.dir), f"{root}/{entry['name']}", "is missing (the checkpoint lists it)"
                )
        segments = sorted((_seq_of(n), n) for n in names if _is_segment(n))
        self._check_complete(head, checkpoint, segments, folded)
        for seq, name in segments:
            self._seq = max(self._seq, seq)
            if name.rsplit("/", 1)[-1] in folded:
                remove_quietly(fs, name)  # a crash between the checkpoint and the clean-up left it
                continue
            for event in self._read_verified(fs, name):
                self._apply(event)
            self._segments.append((seq, name))
        if head is not None:
            self._seq = max(self._seq, int(head.get("seq") or 0))
        for name in names:
            if name.endswith(".part"):  # a write cut short by a crash: it never counted
                remove_quietly(fs, name)
        return self

    def _check_complete(
        self,
        head: dict[str, Any] | None,
        checkpoint: str | None,
        segments: list[tuple[int, str]],
        folded: set[str],
    ) -> None:
        """Every file the head vouches for is there: a removed file is damage, not an empty ledger."""
        root = self.dir.path
        if head is None:
            # The very first write (segment 1) lands before its head: that alone is a crash, not damage.
            if checkpoint is None and [seq for seq, _ in segments] in ([], [1]):
                return
            raise LedgerDamagedError(
                str(self.dir), f"{root}/{HEAD}", "is missing while the ledger has records"
            )
        if int(head.get("checkpoint_seq") or 0) > self._checkpoint_seq:
            raise LedgerDamagedError(
                str(self.dir),
                f"{root}/{CHECKPOINT}",
                "is missing (or older than the head says: "
                f"{self._checkpoint_seq} < {head.get('checkpoint_seq')})",
            )
        present = {seq for seq, name in segments if name.rsplit("/", 1)[-1] not in folded}
        for seq in range(self._checkpoint_seq + 1, int(head.get("seq") or 0) + 1):
            if seq not in present:
                raise LedgerDamagedError(
                    str(self.dir),
                    f"{root}/seg-{seq:09d}-*.jsonl",
                    "is missing (the head says it was written)",
                )

    def _read_head(self, fs: Any, name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        head = _read_json_file(fs, name, str(self.dir))
        if not isinstance(head.get("seq"), int):
            raise LedgerDamagedError(str(self.dir), name, "is corrupt (no sequence number)")
        return head

    def _read_checkpoint(self, fs: Any, name: str, *, archive: bool = True) -> set[str]:
        lines = self._read_verified(fs, name)
        if not lines:
            raise LedgerDamagedError(str(self.dir), name, "has no header")
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
        self._archive_files = list(header.get("archive") or [])
        # Interned: the archive's index and the inputs' index hold the same keys, once (``_key``).
        self._archived = {
            _key(key): state for state, keys in (header.get("archived") or {}).items() for key in keys.split()
        }
        self._archived_spent = float(header.get("archived_spent") or 0.0)
        self._durations = [float(d) for d in header.get("durations") or []]
        if archive:
            self._load_archive()
        for data in records:
            record = ItemRecord.from_json(data)
            self.items[record.key] = record
        return set(header.get("folded") or [])

    def _read_verified(self, fs: Any, name: str) -> list[dict[str, Any]]:
        return read_verified(fs, name, str(self.dir))

    def _load_archive(self) -> None:
        """Read the archived records (once): the manifest, a new try, a report of failures need them."""
        if not self._archived:
            return
        view = self._archive_view()
        for key in self._archived:
            record = view.get(key)
            if record is not None:
                self.items[key] = record
        self._drop_archive_view()
        self._archived = {}
        self._archived_spent = 0.0
        self._by_state = None
        self._read_all = True

    def _archive_view(self) -> ArchiveView:
        """The archive's files, checked once; a record is read back and parsed only when asked for.

        What a part that only reads final records needs (the manifest, the summary, a report of
        failures): an index of where each record is instead of ~7 kB per parsed record (the last
        part of a 100,000-item batch: 181 MB instead of 582 MB at the peak, ``ArchiveView``).
        """
        if self._archive is None:
            self._archive = ArchiveView.read(self.dir, self._archive_files, self._archived)
        return self._archive

    def _drop_archive_view(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def _apply(self, event: dict[str, Any]) -> bool:
        """Apply one event if its expectation holds; whether it applied."""
        if "meta" in event:
            self.meta.update(event["meta"])
            return True
        key = event.get("key")
        if not key:
            return False
        record = self.items.get(key)
        if record is None and key in self._archived:
            # An event on a final record (a new try resets failed items): read the archive, then apply.
            self._load_archive()
            record = self.items.get(key)
        expect = event.get("expect")
        if expect and not _holds(record, expect):
            self.ignored += 1
            return False
        if record is None:
            record = self.items[key] = ItemRecord(key=key, index=int(event.get("index", -1)))
            before = None
        else:
            before = record.state
        for name, value in event.items():
            if name not in ("key", "expect") and hasattr(record, name):
                setattr(record, name, value)
        if self._by_state is not None and record.state != before:
            if before is not None:
                self._by_state.get(before, {}).pop(key, None)
            self._by_state.setdefault(record.state, {})[key] = None
        return True

    # -- writing --------------------------------------------------------------------------------

    def append(self, events: Iterable[dict[str, Any]]) -> list[bool]:
        """Store ``events`` durably (one new object), then apply them; returns once they are stored.

        An event is a partial ``ItemRecord`` (``key`` plus the fields that changed, and an optional
        ``expect``) or ``{"meta": {...}}``. Returns, per event, whether it applied. Raises ``OSError``
        (or the store's error) when the write fails: nothing that depends on it may happen then.
        """
        batch = list(events)
        if not batch:
            return []
        self._seq += 1
        name = f"seg-{self._seq:09d}-{uuid.uuid4().hex[:6]}.jsonl"
        path = self._write(name, _sealed([json.dumps(e, separators=(",", ":")) for e in batch]))
        self._segments.append((self._seq, path))
        self._write_head()
        return [self._apply(event) for event in batch]

    def set_meta(self, **values: Any) -> None:
        """Record batch-wide facts (the try and when it started, the batch's deadline...)."""
        self.append([{"meta": values}])

    def compact(self, *, force: bool = False) -> None:
        """Fold the events into a new checkpoint and delete them (when there are many, or ``force``).

        Records in a final state go to the archive: a ledger that read it writes one archive file
        of every final record (and deletes the older ones); a resumed part adds one file with the
        records that became final since (its earlier files stay, listed). The checkpoint keeps
        the records still moving, and the archive's keys, states and spend in its header.
        """
        # A ledger that read the archive always compacts: its events may change final records, and
        # a resumed part would otherwise read the whole archive again to apply them.
        if not self._segments or (
            len(self._segments) < COMPACT_AFTER_SEGMENTS and not force and not self._read_all
        ):
            return
        self._seq += 1  # the checkpoint takes its own number: later segments of any writer follow it
        read_all = not self._archived
        finals = [r for r in self.items.values() if r.state in FINAL]
        old_files = self._archive_files
        files = [] if read_all else list(old_files)
        if finals:
            name = f"done-{self._seq:09d}-{uuid.uuid4().hex[:6]}.jsonl"
            self._write(name, _sealed([json.dumps(r.to_json(), separators=(",", ":")) for r in finals]))
            files.append({"name": name, "lines": len(finals)})
        archived: dict[str, list[str]] = {}
        for key, state in self._archived.items():
            archived.setdefault(state, []).append(key)
        for record in finals:
            archived.setdefault(record.state, []).append(record.key)
        durations = [*self._durations, *(d for r in finals if (d := _duration(r)) is not None)]
        spent = self._archived_spent + sum(r.spent_usd() for r in finals)
        header: dict[str, Any] = {
            "version": LEDGER_VERSION,
            "model_id": self.model_id,
            "seq": self._seq,
            "meta": self.meta,
            "folded": [name.rsplit("/", 1)[-1] for _, name in self._segments],
            "archive": files,
            "archived": {state: " ".join(keys) for state, keys in archived.items()},
            "archived_spent": spent,
            "durations": durations[-DURATIONS_KEPT:],
            "written_at": time.time(),
        }
        lines = [json.dumps(header, separators=(",", ":"))]
        lines += [
            json.dumps(r.to_json(), separators=(",", ":"))
            for r in self.items.values()
            if r.state not in FINAL
        ]
        self._write(CHECKPOINT, _sealed(lines))
        self._checkpoint_seq = self._seq
        self._write_head()
        fs = self.dir.fs
        for _, name in self._segments:
            remove_quietly(fs, name)
        self._segments.clear()
        if read_all:
            kept = {entry["name"] for entry in files}
            for entry in old_files:
                if entry["name"] not in kept:
                    remove_quietly(fs, f"{self.dir.path}/{entry['name']}")
        self._archive_files = files
        self._drop_archive_view()  # read again (with the new file) if a record is asked for
        # The final records leave memory: a worker that runs the whole batch (``deferrable=False``)
        # holds what is still moving, not N records; one asked for later is read back.
        for record in finals:
            del self.items[record.key]
            self._archived[record.key] = record.state
        self._archived_spent = spent
        self._durations = durations[-DURATIONS_KEPT:]
        self._by_state = None
        self._read_all = False

    def _write_head(self) -> None:
        head = {"seq": self._seq, "checkpoint_seq": self._checkpoint_seq, "written_at": time.time()}
        self._write(HEAD, _sealed_json(head))

    def _write(self, name: str, blob: bytes) -> str:
        return write_durably(self.dir, name, blob)

    # -- views ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[ItemRecord]:
        self._load_archive()
        return iter(self.items.values())

    def __contains__(self, key: object) -> bool:
        """Whether the ledger has a record of ``key`` (archived or not): such an item was checked."""
        return key in self.items or key in self._archived

    def get(self, key: str) -> ItemRecord | None:
        """The record of ``key``; an archived one is read back from the archive (a copy: change it
        through an event, never in place)."""
        record = self.items.get(key)
        if record is None and key in self._archived:
            return self._archive_view().get(key)
        return record

    def spent_usd(self) -> float:
        """What every record cost in every try (the archive's from the checkpoint's header)."""
        return self._archived_spent + sum(r.spent_usd() for r in self.items.values())

    def durations(self) -> list[float]:
        """Run times of finished jobs (RunComfy's own timestamps), the archive's recent ones first."""
        return [*self._durations, *(d for r in self.items.values() if (d := _duration(r)) is not None)]

    def count_in(self, states: Iterable[str], among: Container[str]) -> int:
        """Records in ``states`` whose key is in ``among``, archived ones included, none read for it."""
        wanted = set(states)
        loaded = sum(1 for key in self.keys_in(*(wanted - FINAL)) if key in among)
        if self._archived:
            loaded += sum(1 for r in self.items.values() if r.state in wanted & FINAL and r.key in among)
            return loaded + sum(1 for k, s in self._archived.items() if s in wanted and k in among)
        return loaded + sum(1 for key in self.keys_in(*(wanted & FINAL)) if key in among)

    def count_known(self, among: Container[str]) -> int:
        """Records (archived ones too) whose key is in ``among``."""
        return sum(1 for key in self.items if key in among) + sum(1 for key in self._archived if key in among)

    def keys_in(self, *states: str) -> list[str]:
        """The keys of the records in ``states`` (in the order they reached it), without a walk over all.

        Archived keys come from the checkpoint's header (their records are not read for it).
        """
        if self._by_state is None:
            self._by_state = {}
            for key, record in self.items.items():
                self._by_state.setdefault(record.state, {})[key] = None
        keys = [key for state in states for key in self._by_state.get(state, ())]
        if self._archived and FINAL.intersection(states):
            wanted = set(states)
            keys += [key for key, state in self._archived.items() if state in wanted]
        return keys


# -- files --------------------------------------------------------------------------------------


def write_durably(folder: ObjectStoragePath, name: str, blob: bytes) -> str:
    """Write ``blob`` as ``folder/name`` whole, and make it survive a host crash before returning.

    On a local disk: part file, fsync, rename, fsync of the folder (without the last one a
    power cut can lose the rename, and with it the intent that allowed a paid submit). On an
    object store: one put, durable when it returns.
    """
    fs, root = folder.fs, folder.path
    target = f"{root}/{name}"
    if _is_local(fs):
        os.makedirs(root, exist_ok=True)
        part = f"{target}.{uuid.uuid4().hex[:12]}.part"
        try:
            with open(part, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(part, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
        _fsync_dir(root)
        return target
    fs.makedirs(root, exist_ok=True)
    with part_file(fs, target) as (part, file):
        file.write(blob)
    move_into_place(fs, part, target)
    return target


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol
    names = {protocols} if isinstance(protocols, str) else set(protocols)
    return bool(names & {"file", "local"})


def _sealed(lines: list[str]) -> bytes:
    """Lines plus the ``end`` record that lets a reader see the file whole: count and sha256."""
    body = "".join(line + "\n" for line in lines).encode()
    end = {"end": {"lines": len(lines), "sha256": hashlib.sha256(body).hexdigest()}}
    return body + (json.dumps(end, separators=(",", ":")) + "\n").encode()


#: Lines sealed with their ``end`` record (``read_verified`` reads them back), for files beside the ledger.
sealed_lines = _sealed


def _sealed_json(data: dict[str, Any]) -> bytes:
    body = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return (json.dumps({"data": data, "sha256": hashlib.sha256(body.encode()).hexdigest()}) + "\n").encode()


def _read_bytes(fs: Any, name: str) -> bytes:
    try:
        with fs.open(name, "rb") as file:
            data: bytes = file.read()
            return data
    except FileNotFoundError:
        raise
    except OSError as error:
        raise LedgerReadError(f"Could not read the batch ledger file {name}: {error}") from error


def _read_present(fs: Any, name: str, ledger_dir: str) -> bytes:
    """A ledger file's bytes; one that vanished or is empty is damage (never "no records")."""
    try:
        blob = _read_bytes(fs, name)
    except FileNotFoundError:
        raise LedgerDamagedError(ledger_dir, name, "vanished while it was being read") from None
    if not blob:
        raise LedgerDamagedError(ledger_dir, name, "is empty (0 bytes)")
    return blob


def read_verified(fs: Any, name: str, ledger_dir: str) -> list[dict[str, Any]]:
    """The lines of a sealed file, or ``LedgerDamagedError`` saying how it is damaged."""
    blob, spans = _verified_spans(fs, name, ledger_dir)
    return [_parse_line(blob, start, end, name, ledger_dir) for start, end in spans]


def _verified_spans(fs: Any, name: str, ledger_dir: str) -> tuple[bytes, list[tuple[int, int]]]:
    """A sealed file's bytes and where each of its lines is, once its end record vouches for them."""
    blob = _read_present(fs, name, ledger_dir)
    cut = blob.rstrip(b"\n").rfind(b"\n") + 1
    end = _end_record(blob[cut:], name, ledger_dir)
    _check_seal(end, hashlib.sha256(memoryview(blob)[:cut]), None, name, ledger_dir)
    spans: list[tuple[int, int]] = []
    start = 0
    while start < cut:  # offsets, not copies: an archive file of 100,000 records is ~100 MB
        stop = blob.index(b"\n", start)
        spans.append((start, stop))
        start = stop + 1
    _check_seal(end, None, len(spans), name, ledger_dir)
    return blob, spans


def _end_record(last: bytes, name: str, ledger_dir: str) -> dict[str, Any]:
    """The ``end`` of a sealed file's last line (``{"sha256", "lines"}``), or the damage that hides it."""
    if not last.endswith(b"\n"):
        raise LedgerDamagedError(ledger_dir, name, "is cut mid-line (its last line has no end)")
    try:
        end = json.loads(last)
    except ValueError:
        end = None
    if not isinstance(end, dict) or not isinstance(end.get("end"), dict):
        raise LedgerDamagedError(ledger_dir, name, "is cut short (its end record is missing)")
    return dict(end["end"])


def _check_seal(end: dict[str, Any], digest: Any, count: int | None, name: str, ledger_dir: str) -> None:
    """The body's sha256 (``digest``) and line ``count`` against the end record, each when given."""
    if digest is not None and digest.hexdigest() != end.get("sha256"):
        raise LedgerDamagedError(ledger_dir, name, "is corrupt (its checksum does not match)")
    if count is not None and count != end.get("lines"):
        raise LedgerDamagedError(
            ledger_dir, name, f"has {count} lines where its end record says {end.get('lines')}"
        )


def _parse_line(blob: bytes, start: int, end: int, name: str, ledger_dir: str) -> dict[str, Any]:
    try:
        data = json.loads(blob[start:end])
    except ValueError as error:  # pragma: no cover - a matching checksum over invalid JSON
        raise LedgerDamagedError(ledger_dir, name, f"is corrupt ({error})") from error
    if not isinstance(data, dict):  # pragma: no cover - likewise
        raise LedgerDamagedError(ledger_dir, name, "is corrupt (a line is not a JSON object)")
    return data


@dataclass
class ArchiveView:
    """The archived records of a ledger, checked once, each parsed only when it is asked for.

    On a local disk the files stay open and a record is read back by its offsets: the archive is
    never all in memory, not even while it is checked (a line at a time). On an object store each
    file is held as its checked bytes (one read per file; a read per record would be a request
    per record). ``read`` fails (``LedgerDamagedError``) as reading every record would.
    """

    ledger_dir: str
    sources: list[tuple[str, bytes | BinaryIO]]  # (file name, its bytes or the open local file)
    where: dict[str, int]  # key -> its record's line: source, start and length in one int (``_place``)

    @classmethod
    def read(
        cls, folder: ObjectStoragePath, files: Sequence[dict[str, Any]], archived: Mapping[str, str]
    ) -> ArchiveView:
        """Read and check every archive file; index the lines of the records ``archived`` names (key -> state)."""
        fs, ledger_dir = folder.fs, str(folder)
        local = is_local(fs)
        sources: list[tuple[str, bytes | BinaryIO]] = []
        where: dict[str, int] = {}
        try:
            for entry in files:
                name = f"{folder.path}/{entry['name']}"
                number = len(sources)  # this file's place in ``sources``, appended below

                # Straight into ``where``: a file that does not prove whole raises, and the view
                # is not made (a list of the file's lines first was ~12 MB at 100,000 records).
                def keep(data: dict[str, Any], start: int, end: int, number: int = number) -> None:
                    key = _key(str(data.get("key")))
                    if archived.get(key) == data.get("state"):
                        where[key] = _place(number, start, end)

                if local:
                    file = _open_present(name, ledger_dir)
                    sources.append((name, file))
                    count = _scan_local(file, name, ledger_dir, keep)
                else:
                    blob, spans = _verified_spans(fs, name, ledger_dir)
                    sources.append((name, blob))
                    for start, end in spans:
                        keep(_parse_line(blob, start, end, name, ledger_dir), start, end)
                    count = len(spans)
                if count != int(entry.get("lines", -1)):
                    raise LedgerDamagedError(
                        ledger_dir,
                        name,
                        f"has {count} records where the checkpoint says {entry.get('lines')}",
                    )
        except BaseException:
            _close_sources(sources)
            raise
        missing = len(archived) - sum(1 for key in archived if key in where)
        if missing:
            _close_sources(sources)
            raise LedgerDamagedError(
                ledger_dir, f"{folder.path}/done-*.jsonl", f"lack {missing} archived records"
            )
        return cls(ledger_dir, sources, where)

    def get(self, key: str) -> ItemRecord | None:
        place = self.where.get(key)
        if place is None:
            return None
        number, start, end = _unplace(place)
        name, source = self.sources[number]
        if isinstance(source, bytes):
            return ItemRecord.from_json(_parse_line(source, start, end, name, self.ledger_dir))
        line = os.pread(source.fileno(), end - start, start)
        return ItemRecord.from_json(_parse_line(line, 0, len(line), name, self.ledger_dir))

    def close(self) -> None:
        _close_sources(self.sources)


def _key(key: str) -> str:
    """One string object per item key in a part, however many indexes hold it.

    The last part of a 100,000-item batch held each key three times (the inputs' index, the
    checkpoint's list of archived keys, the archive's index): ~8 MB a copy (``bench/batch_final_part.py``).
    """
    return sys.intern(key)


#: Bits of an archived line's start and of its length in a packed place (``_place``): 1 TB each.
_PLACE_BITS = 40
_PLACE_MASK = (1 << _PLACE_BITS) - 1


def _place(source: int, start: int, end: int) -> int:
    """A line's place in the archive as one int: ~40 bytes per record, where a tuple of three took ~120."""
    return (source << (2 * _PLACE_BITS)) | (start << _PLACE_BITS) | (end - start)


def _unplace(place: int) -> tuple[int, int, int]:
    """``(source, start, end)`` of a packed place."""
    start = (place >> _PLACE_BITS) & _PLACE_MASK
    return place >> (2 * _PLACE_BITS), start, start + (place & _PLACE_MASK)


def _open_present(name: str, ledger_dir: str) -> BinaryIO:
    try:
        return open(name, "rb")  # kept open by the view, closed by its ``close``
    except FileNotFoundError:
        raise LedgerDamagedError(ledger_dir, name, "vanished while it was being read") from None


def _scan_local(
    file: BinaryIO, name: str, ledger_dir: str, on_line: Callable[[dict[str, Any], int, int], object]
) -> int:
    """``_verified_spans`` of a local file a line at a time: ``on_line(record, start, end)`` for each
    line before its end record; the count of those lines. Raises as ``_verified_spans`` does."""
    digest = hashlib.sha256()
    count = 0
    last: bytes | None = None
    last_start = offset = 0
    for line in file:
        if last is not None:  # not the end record: the line before the one just read
            digest.update(last)
            on_line(
                _parse_line(last, 0, len(last) - 1, name, ledger_dir), last_start, last_start + len(last) - 1
            )
            count += 1
        last, last_start = line, offset
        offset += len(line)
    if last is None:
        raise LedgerDamagedError(ledger_dir, name, "is empty (0 bytes)")
    _check_seal(_end_record(last, name, ledger_dir), digest, count, name, ledger_dir)
    return count


def _close_sources(sources: Sequence[tuple[str, bytes | BinaryIO]]) -> None:
    for _, source in sources:
        if not isinstance(source, bytes):
            source.close()


def _read_json_file(fs: Any, name: str, ledger_dir: str) -> dict[str, Any]:
    blob = _read_present(fs, name, ledger_dir)
    try:
        sealed = json.loads(blob)
        data = sealed["data"]
        body = json.dumps(data, separators=(",", ":"), sort_keys=True)
        intact = hashlib.sha256(body.encode()).hexdigest() == sealed["sha256"]
    except (ValueError, KeyError, TypeError):
        raise LedgerDamagedError(ledger_dir, name, "is cut or corrupt (not its sealed JSON)") from None
    if not intact or not isinstance(data, dict):
        raise LedgerDamagedError(ledger_dir, name, "is corrupt (its checksum does not match)")
    return data


def read_sealed_json(fs: Any, name: str, ledger_dir: str) -> dict[str, Any] | None:
    """A small sealed JSON file (head, owner), None when absent; ``LedgerDamagedError`` when damaged."""
    try:
        return _read_json_file(fs, name, ledger_dir)
    except LedgerDamagedError as error:
        if error.what.startswith("vanished"):
            return None
        raise


def sealed_json(data: dict[str, Any]) -> bytes:
    """``data`` as a small sealed JSON file (``read_sealed_json`` reads it back)."""
    return _sealed_json(data)


def _duration(record: ItemRecord) -> float | None:
    outcome = record.outcome or {}
    start, end = outcome.get("created_at"), outcome.get("finished_at")
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _holds(record: ItemRecord | None, expect: dict[str, Any]) -> bool:
    """Whether ``record`` is as ``expect`` says: ``state`` (one of a list), ``request_id``, ``owner``."""
    if record is None:
        return expect.get("state") is None or None in (expect.get("state") or [])
    states = expect.get("state")
    if states is not None and record.state not in states:
        return False
    if "request_id" in expect and record.request_id != expect["request_id"]:
        return False
    return not ("owner" in expect and record.owner != expect["owner"])


def _is_segment(name: str) -> bool:
    # A write cut short leaves ``seg-....jsonl.<rand>.part``: never an event (it may be half a line).
    base = name.rsplit("/", 1)[-1]
    return base.startswith("seg-") and base.endswith(".jsonl")


def _seq_of(name: str) -> int:
    try:
        return int(name.rsplit("/", 1)[-1].split("-")[1])
    except (IndexError, ValueError):
        return 0
