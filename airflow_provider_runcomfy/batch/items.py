"""The inputs of a batch: read from a list or a JSON-lines file, each known by a stable key.

``inputs`` is a list of model-input dicts (literal, rendered, or an XComArg's value)
or the URI of a JSON-lines file with one input per line -- any ``ObjectStoragePath``
(``s3://``, ``gs://``, ``file://``, a local path) -- so that 100,000 inputs never pass
through XCom.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Container, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.client.redact import redact_value

if TYPE_CHECKING:
    from datetime import timedelta

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.arguments import PreflightMode
    from airflow_provider_runcomfy.sources.prepare import PreparedBody

#: The manifest carries an input as it is up to this size (JSON characters), a digest beyond.
MAX_INPUT_IN_MANIFEST = 4096

#: The most inputs one batch takes: the ledger and the manifest are read whole by the worker.
MAX_ITEMS = 1_000_000
#: The index of a JSON-lines inputs file, beside the ledger in the task's folder (see ``load_items``).
INPUTS_INDEX = "_inputs.idx"
#: Bytes hashed at once when a worker part checks that the part of the file already read is unchanged.
_CHUNK = 1 << 20

_UNREAD: Any = object()


class BatchItem:
    """One input of the batch.

    :param index: its position in the inputs (0-based), the order of the manifest.
    :param input: the input as the user gave it (before any preparation: a storage path stays a path).
    :param key: fingerprint and occurrence, the item's identity in the ledger.
    :param source: where an input of a JSON-lines file is read again when it is needed (``input``
        not given): a worker part keeps the keys of 100,000 lines, not their inputs.
    :param offset: the byte offset of its line in ``source``.
    """

    __slots__ = ("_input", "index", "key", "offset", "source")

    def __init__(
        self,
        index: int,
        input: Any = _UNREAD,
        key: str = "",
        *,
        source: InputsFile | None = None,
        offset: int = -1,
    ) -> None:
        self.index = index
        self._input = input
        self.key = key
        self.source = source
        self.offset = offset

    @property
    def input(self) -> Any:
        """The input; one of an inputs file is read from its line (not kept: memory stays bounded)."""
        if self._input is _UNREAD:
            assert self.source is not None, "an item without its input has its source"
            return self.source.line_at(self.offset)
        return self._input

    def __repr__(self) -> str:
        return f"BatchItem(index={self.index}, key={self.key!r})"

    def manifest_input(self) -> Any:
        """The input for the manifest: as given when small, a digest when large (data URIs, long prompts).

        Credentials are redacted: an inputs file may be another DAG's manifest or carry signed
        URLs, and the manifest is served by the outputs view to whoever may read this DAG.
        """
        value = self.input
        text = json.dumps(value, sort_keys=True, default=str)
        if len(text) <= MAX_INPUT_IN_MANIFEST:
            return redact_value(value)
        return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "json_chars": len(text)}


def load_inputs(inputs: Any) -> list[Any]:
    """The list of inputs from what the operator was given (a list, or a JSON-lines URI/path)."""
    if isinstance(inputs, (str, os.PathLike)) or _is_storage_path(inputs):
        return _read_jsonl(inputs)
    if isinstance(inputs, Mapping):
        raise InvalidInputError(
            "inputs must be a list of model-input dicts (or the URI of a JSON-lines file), not one dict; "
            "wrap a single input in a list."
        )
    if isinstance(inputs, Sequence):
        items = list(inputs)
        if len(items) > MAX_ITEMS:
            raise InvalidInputError(f"inputs has {len(items)} items; one batch takes at most {MAX_ITEMS}.")
        return items
    raise InvalidInputError(
        f"inputs must be a list of model-input dicts or the URI of a JSON-lines file, not {type(inputs).__name__}."
    )


def make_items(model_id: str, inputs: Sequence[Any]) -> list[BatchItem]:
    """``BatchItem`` of each input; an input that is not even JSON still gets a key (it is invalid)."""
    seen: Counter[str] = Counter()
    return [BatchItem(index, value, _key(model_id, index, value, seen)) for index, value in enumerate(inputs)]


def prepare_items(
    model_id: str,
    items: Sequence[BatchItem],
    *,
    for_submit: bool,
    preflight: PreflightMode,
    sign_expiry: int | timedelta | None,
    api_base_url: str | None,
    log: Any,
) -> list[PreparedBody]:
    """Each item's request body, or the ``RunComfyError`` that makes it invalid (``sources``).

    The first pass (``for_submit=False``) checks every item's files in storage and pre-flights
    its https inputs, concurrently and bounded, signing and reading nothing; the second signs or
    inlines the files of the items about to be submitted (their URLs are not pre-flighted again).
    The ledger and the manifest keep the inputs as given.
    """
    from airflow_provider_runcomfy.sources import InputPreparer

    dicts = [item for item in items if isinstance(item.input, Mapping)]
    with InputPreparer(
        preflight="off" if for_submit else preflight,
        sign_expiry=sign_expiry,
        api_base_url=api_base_url,
        check_only=not for_submit,
        logger=log,
    ) as preparer:
        try:
            prepared = iter(list(preparer.prepare_many(model_id, [item.input for item in dicts])))
        except (ValueError, TypeError):
            # One malformed input (``https://[::1/x.png``: a ValueError from URL parsing, or a typed
            # error that is one) must not sink the others: each item again on its own, its error its own.
            prepared = iter([_prepare_one(preparer, model_id, item) for item in dicts])
    results: list[PreparedBody] = []
    for item in items:
        if not isinstance(item.input, Mapping):
            results.append(_not_a_dict(item))
            continue
        one = next(prepared)
        results.append(one if isinstance(one, RunComfyError) else one.payload_to_send)
    return results


def _prepare_one(preparer: Any, model_id: str, item: BatchItem) -> Any:
    """One item's preparation; any error it raises is that item's reason to be invalid."""
    from airflow_provider_runcomfy.batch.lean import clip

    try:
        (one,) = preparer.prepare_many(model_id, [item.input])
    except RunComfyError as error:
        return error
    except (ValueError, TypeError) as error:
        return InvalidInputError(clip(f"Item {item.index}: an input URL is malformed ({error})."))
    return one


def _not_a_dict(item: BatchItem) -> RunComfyError:
    return InvalidInputError(
        f"Item {item.index}: an input must be a JSON object of the model's fields, not "
        f"{type(item.input).__name__}: {str(item.input)[:80]!r}."
    )


def _is_storage_path(value: Any) -> bool:
    # Asked of ``outputs.files``, the one place that knows storage paths are Airflow's type.
    from airflow_provider_runcomfy.outputs.files import is_storage_path

    return is_storage_path(value)


def _inputs_path(uri: Any) -> Any:
    from airflow_provider_runcomfy.outputs.files import storage_path

    text = os.fspath(uri) if isinstance(uri, os.PathLike) and not _is_storage_path(uri) else uri
    if isinstance(text, str) and not text.strip():
        raise InvalidInputError("inputs is an empty string: give a list of inputs or a JSON-lines URI.")
    # The one resolver (a path, file://, s3://, any fsspec), whose errors name ``inputs``.
    return storage_path(text, argument="inputs", access="read")


def _read_jsonl(uri: Any) -> list[Any]:
    path = _inputs_path(uri)
    items: list[Any] = []
    try:
        with path.open("r") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                items.append(_parse_line(path, number, line))
                if len(items) > MAX_ITEMS:
                    raise InvalidInputError(f"inputs file {path} has more than {MAX_ITEMS} lines.")
    except FileNotFoundError:
        raise InvalidInputError(f"inputs file {path} does not exist.") from None
    return items


def _parse_line(path: Any, number: int, line: str | bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as error:
        raise InvalidInputError(
            f"inputs file {path}, line {number}: not JSON ({error}); each line must be one "
            "model input as a JSON object."
        ) from None


def _key(model_id: str, index: int, value: Any, seen: Counter[str]) -> str:
    try:
        fingerprint = input_fingerprint(model_id, value if isinstance(value, Mapping) else {"_": value})
    except (TypeError, ValueError):
        fingerprint = hashlib.sha256(f"unserialisable:{index}:{value!r}".encode()).hexdigest()
    short = fingerprint[:32]
    occurrence = seen[short]
    seen[short] += 1
    return f"{short}.{occurrence}"


def load_items(model_id: str, inputs: Any, folder: ObjectStoragePath | None = None) -> ItemList:
    """The batch's items; those of a JSON-lines file cost what changed since the last worker part.

    A list is taken as it is. A JSON-lines file is read forward from the position the last
    worker part recorded in ``{folder}/_inputs.idx`` (byte offset, item count, the keys so far
    and the sha256 of the bytes before that position): the lines already read are hashed, not
    parsed and fingerprinted again, and their inputs are read back from their lines only when
    needed (the next submits, the manifest). An edited file (its first bytes no longer hash the
    same) is read again from the start, so changed inputs are new items as always. A damaged or
    absent index is only a slower read: it holds nothing that was paid for.
    """
    if folder is not None and (isinstance(inputs, (str, os.PathLike)) or _is_storage_path(inputs)):
        source = InputsFile(_inputs_path(inputs))
        try:
            return source.items(model_id, folder)
        except FileNotFoundError:
            raise InvalidInputError(f"inputs file {source.path} does not exist.") from None
    return ItemList.of(make_items(model_id, load_inputs(inputs)))


class ItemList(Sequence[BatchItem]):
    """The batch's items in input order, kept as keys and line offsets, made into ``BatchItem`` on access.

    100,000 small objects cost a worker part seconds of garbage collection (they are tracked;
    strings and integers are not), so an inputs file's items live as two flat lists and a
    ``BatchItem`` exists only while a step uses it.
    """

    def __init__(
        self,
        keys: list[str],
        *,
        objects: list[BatchItem] | None = None,
        source: InputsFile | None = None,
        offsets: list[int] | None = None,
        tail: BatchItem | None = None,
    ) -> None:
        self.keys = keys if tail is None else [*keys, tail.key]
        self._objects = objects
        self._source = source
        self._offsets = offsets or []
        self._tail = tail
        self._positions: dict[str, int] | None = None

    @classmethod
    def of(cls, items: Sequence[BatchItem]) -> ItemList:
        """``items`` as an ``ItemList`` (a list of inputs is small enough to keep as objects)."""
        if isinstance(items, ItemList):
            return items
        objects = list(items)
        return cls([item.key for item in objects], objects=objects)

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> BatchItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[BatchItem]: ...

    def __getitem__(self, index: int | slice) -> BatchItem | list[BatchItem]:
        if isinstance(index, slice):
            return [self._item(n) for n in range(len(self.keys))[index]]
        return self._item(range(len(self.keys))[index])

    def __iter__(self) -> Iterator[BatchItem]:
        return (self._item(n) for n in range(len(self.keys)))

    def _item(self, n: int) -> BatchItem:
        if self._objects is not None:
            return self._objects[n]
        if self._tail is not None and n == len(self.keys) - 1:
            return self._tail
        return BatchItem(n, key=self.keys[n], source=self._source, offset=self._offsets[n])

    def position(self, key: str) -> int | None:
        """The index of the item known by ``key``, if it is one of these."""
        if self._positions is None:
            self._positions = {key: n for n, key in enumerate(self.keys)}
        return self._positions.get(key)

    def by_key(self) -> Mapping[str, BatchItem]:
        """The items by key, made on access."""
        return _ByKey(self)

    def unseen(self, known: Container[str], limit: int | None) -> list[BatchItem]:
        """The first ``limit`` items whose key is not in ``known`` (keys compared, no item made for the rest)."""
        positions = (n for n, key in enumerate(self.keys) if key not in known)
        return [self._item(n) for n in itertools.islice(positions, limit)]


class _ByKey(Mapping[str, BatchItem]):
    def __init__(self, items: ItemList) -> None:
        self._items = items

    def __getitem__(self, key: str) -> BatchItem:
        n = self._items.position(key)
        if n is None:
            raise KeyError(key)
        return self._items[n]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._items.position(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items.keys)

    def __len__(self) -> int:
        return len(self._items)


class InputsFile:
    """A JSON-lines inputs file: its items from the recorded position on, and any line read back."""

    def __init__(self, path: Any) -> None:
        self.path = path
        self._file: Any = None
        self._lock = threading.Lock()  # outputs are copied in threads; one handle, one seek at a time

    def line_at(self, offset: int) -> Any:
        with self._lock:
            if self._file is None:
                self._file = self.path.open("rb")
            self._file.seek(offset)
            line = self._file.readline()
        return json.loads(line)

    def items(self, model_id: str, folder: ObjectStoragePath) -> ItemList:
        index = _read_index(folder, model_id, str(self.path))
        keys: list[str] = []
        offsets: list[int] = []
        number = 0
        with self.path.open("rb") as file:
            digest = hashlib.sha256()
            if index is not None and _prefix_matches(
                file, digest, int(index["offset"]), str(index["sha256"])
            ):
                keys, offsets = list(index["keys"]), list(index["offsets"])
                number = int(index["lines"])
                position = int(index["offset"])
            else:
                index = None
                file.seek(0)
                digest = hashlib.sha256()
                position = 0
            recorded = (position, len(keys), number)
            seen: Counter[str] | None = None
            tail: BatchItem | None = None
            for raw in file:
                number += 1
                at, position = position, position + len(raw)
                complete = raw.endswith(b"\n")
                if complete:
                    digest.update(raw)  # a last line without its newline may still grow: never recorded
                if raw.strip():
                    if seen is None:  # occurrences of identical inputs go on from the part already read
                        seen = Counter(k.rsplit(".", 1)[0] for k in keys)
                    value = _parse_line(self.path, number, raw)
                    key = _key(model_id, len(keys), value, seen)
                    if not complete:
                        tail = BatchItem(len(keys), value, key)
                        break
                    keys.append(key)
                    offsets.append(at)
                    if len(keys) > MAX_ITEMS:
                        raise InvalidInputError(f"inputs file {self.path} has more than {MAX_ITEMS} lines.")
                if complete:
                    recorded = (position, len(keys), number)
        if index is None or recorded[1] != int(index["count"]) or recorded[0] != int(index["offset"]):
            _write_index(folder, model_id, str(self.path), recorded, digest.hexdigest(), keys, offsets)
        return ItemList(keys, source=self, offsets=offsets, tail=tail)


def _prefix_matches(file: Any, digest: Any, length: int, expected: str) -> bool:
    """Whether the file's first ``length`` bytes hash to ``expected`` (read in chunks: memory stays small)."""
    remaining = length
    while remaining > 0:
        chunk = file.read(min(_CHUNK, remaining))
        if not chunk:
            return False
        digest.update(chunk)
        remaining -= len(chunk)
    return bool(digest.copy().hexdigest() == expected)


def _read_index(folder: ObjectStoragePath, model_id: str, uri: str) -> dict[str, Any] | None:
    from airflow_provider_runcomfy.batch import ledger as L

    target = folder / INPUTS_INDEX
    try:
        if not target.exists():
            return None
        header, body = L.read_verified(target.fs, target.path, str(folder))
        keys = [sys.intern(key) for key in str(body["keys"]).split(" ")] if body["keys"] else []
        offsets = list(body["offsets"])
    except (L.LedgerReadError, KeyError, TypeError, ValueError):
        return None  # rebuilt from the file: the index is a shortcut, never a record of payment
    if (header.get("model_id"), header.get("uri")) != (model_id, uri) or len(keys) != header.get("count"):
        return None
    return {**header, "keys": keys, "offsets": offsets}


def _write_index(
    folder: ObjectStoragePath,
    model_id: str,
    uri: str,
    recorded: tuple[int, int, int],
    sha256: str,
    keys: list[str],
    offsets: list[int],
) -> None:
    from airflow_provider_runcomfy.batch import ledger as L

    offset, count, lines = recorded
    header = {
        "model_id": model_id,
        "uri": uri,
        "offset": offset,
        "count": count,
        "lines": lines,
        "sha256": sha256,
    }
    body = {"keys": " ".join(keys[:count]), "offsets": offsets[:count]}
    blob = L.sealed_lines([json.dumps(header), json.dumps(body, separators=(",", ":"))])
    # Not written: the next worker part reads the file again; a folder that cannot be written fails at the ledger.
    with contextlib.suppress(OSError):
        L.write_durably(folder, INPUTS_INDEX, blob)
