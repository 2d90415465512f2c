"""The inputs of a batch: read from a list or a JSON-lines file, each known by a stable key.

``inputs`` is a list of model-input dicts (literal, rendered, or an XComArg's value)
or the URI of a JSON-lines file with one input per line -- any ``ObjectStoragePath``
(``s3://``, ``gs://``, ``file://``, a local path) -- so that 100,000 inputs never pass
through XCom.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.client.errors import InvalidInputError, RunComfyError
from airflow_provider_runcomfy.client.redact import redact_value

if TYPE_CHECKING:
    from datetime import timedelta

    from airflow_provider_runcomfy.arguments import PreflightMode
    from airflow_provider_runcomfy.sources.prepare import PreparedBody as Prepared

#: The manifest carries an input as it is up to this size (JSON characters), a digest beyond.
MAX_INPUT_IN_MANIFEST = 4096

#: The most inputs one batch takes: the ledger and the manifest are read whole by the worker.
MAX_ITEMS = 1_000_000


@dataclass(frozen=True)
class BatchItem:
    """One input of the batch.

    :param index: its position in the inputs (0-based), the order of the manifest.
    :param input: the input as the user gave it (before any preparation: a storage path stays a path).
    :param key: fingerprint and occurrence, the item's identity in the ledger.
    """

    index: int
    input: Any
    key: str

    def manifest_input(self) -> Any:
        """The input for the manifest: as given when small, a digest when large (data URIs, long prompts).

        Credentials are redacted: an inputs file may be another DAG's manifest or carry signed
        URLs, and the manifest is served by the outputs view to whoever may read this DAG.
        """
        text = json.dumps(self.input, sort_keys=True, default=str)
        if len(text) <= MAX_INPUT_IN_MANIFEST:
            return redact_value(self.input)
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
    items = []
    for index, value in enumerate(inputs):
        try:
            fingerprint = input_fingerprint(model_id, value if isinstance(value, Mapping) else {"_": value})
        except (TypeError, ValueError):
            fingerprint = hashlib.sha256(f"unserialisable:{index}:{value!r}".encode()).hexdigest()
        short = fingerprint[:32]
        occurrence = seen[short]
        seen[short] += 1
        items.append(BatchItem(index=index, input=value, key=f"{short}.{occurrence}"))
    return items


def prepare_items(
    model_id: str,
    items: Sequence[BatchItem],
    *,
    for_submit: bool,
    preflight: PreflightMode,
    sign_expiry: int | timedelta | None,
    api_base_url: str | None,
    log: Any,
) -> list[Prepared]:
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
    results: list[Prepared] = []
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
    try:
        from airflow.sdk import ObjectStoragePath
    except ImportError:  # pragma: no cover - Airflow is a dependency
        return False
    return isinstance(value, ObjectStoragePath)


def _read_jsonl(uri: Any) -> list[Any]:
    from airflow_provider_runcomfy.outputs.storage import resolve_output_dir

    text = os.fspath(uri) if isinstance(uri, os.PathLike) and not _is_storage_path(uri) else uri
    if isinstance(text, str) and not text.strip():
        raise InvalidInputError("inputs is an empty string: give a list of inputs or a JSON-lines URI.")
    path = resolve_output_dir(text, probe=False)  # the same rules: a path, file://, s3://, any fsspec
    items: list[Any] = []
    try:
        with path.open("r") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except ValueError as error:
                    raise InvalidInputError(
                        f"inputs file {path}, line {number}: not JSON ({error}); each line must be one "
                        "model input as a JSON object."
                    ) from None
                if len(items) > MAX_ITEMS:
                    raise InvalidInputError(f"inputs file {path} has more than {MAX_ITEMS} lines.")
    except FileNotFoundError:
        raise InvalidInputError(f"inputs file {path} does not exist.") from None
    return items
