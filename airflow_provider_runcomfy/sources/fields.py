"""Which values of a model input are files: the image fields of a seed model, file-like values of others."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_runcomfy.models.image_url import is_storage_reference
from airflow_provider_runcomfy.models.registry import INPUT_MODELS
from airflow_provider_runcomfy.sources.images import InputKind, kind_of_field

#: Words in a field name that say its value is a file, for models without a typed input.
_FILE_FIELD_WORDS = ("url", "uri", "image", "video", "audio", "mask", "file", "path")


@dataclass(frozen=True)
class Target:
    """One input file: where it is in the input (``key``, list ``index``), its value and kind."""

    key: str
    index: int | None
    value: str
    kind: InputKind
    source: str  # "stored" (a path in storage) or "url" (an https URL to pre-flight)

    @property
    def label(self) -> str:
        return self.key if self.index is None else f"{self.key}[{self.index}]"


def find_targets(model_id: str, record: Mapping[str, Any]) -> list[Target]:
    """The input files of ``record``: the image fields of a typed model; file-like values of any other."""
    input_class = INPUT_MODELS.get(model_id)
    targets = []
    for key, value in record.items():
        if input_class is not None:
            if key not in input_class.image_fields:
                continue
            kind: InputKind = "image"
        else:
            kind = kind_of_field(key)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            source = _source(item, key, typed=input_class is not None)
            if source is not None:
                targets.append(Target(key, index, item, kind, source))
    return targets


def _source(value: Any, key: str, *, typed: bool) -> str | None:
    """``url``, ``stored`` or None (not a file) for one value of the field ``key``.

    In a model we know nothing of, a URL or a bare local path could be any text (a callback,
    a prompt starting with ``/``): it is a file only where the field's name says so
    (``image_url``, ``mask``, ``video_path`` ...). A storage URL (``s3://``) is a file anywhere.
    """
    if not isinstance(value, str):
        return None
    named_as_file = typed or any(word in key.lower() for word in _FILE_FIELD_WORDS)
    scheme = value.partition(":")[0].lower()
    if scheme in ("https", "http") and value[len(scheme) : len(scheme) + 3] == "://":
        return "url" if named_as_file else None
    if is_storage_reference(value):
        return "stored" if named_as_file or not value.startswith("/") else None
    return None
