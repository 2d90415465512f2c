"""The base of every typed model input, and how its validation errors read.

A submit to RunComfy is a paid action, and RunComfy only checks the inputs once
the job is queued. So the inputs are checked here, before any request, and a
mistake is reported the way a DAG author can act on it: the model, each bad
field, and what that field accepts, in one message::

    Invalid input for google/nano-banana/edit: aspect_ratio: 'square' is not one of auto, 21:9, ...;
    num_images: must be between 1 and 4 (got 5)

(one ``field: problem`` entry per error, joined by ``"; "`` on a single line).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from airflow_provider_runcomfy.client.errors import InvalidInputError

_SHOWN_VALUE_LENGTH = 60


class ModelInput(BaseModel):
    """The inputs of one RunComfy model, checked against its schema before anything is sent.

    Subclasses set :attr:`model_id` and declare one field per input, named exactly
    as in the model's API schema, so the payload maps 1:1 onto the request body.

    * ``extra="forbid"``: an unknown key is an error. A misspelt ``aspect_raito``
      silently dropped would run a paid job with the default aspect ratio.
    * ``frozen=True``: inputs are values; once checked they are not reassigned.
    * Constructing an instance raises :class:`InvalidInputError` (a ``ValueError``)
      rather than pydantic's ``ValidationError``, with the message format above;
      the pydantic error stays reachable as ``__cause__``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The RunComfy model these are the inputs of, e.g. ``google/nano-banana/edit``.
    model_id: ClassVar[str]

    #: The fields holding input images (a URL or a list of URLs), which may also name a file in
    #: the user's storage: ``airflow_provider_runcomfy.sources`` signs or inlines those.
    image_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = describe_validation_errors(type(self), exc.errors(include_url=False))
            raise invalid_input(type(self).model_id, problems) from exc

    def to_payload(self) -> dict[str, Any]:
        """The JSON request body: every set field, with ``None`` fields left out.

        Leaving out ``None`` (not merely unset) fields lets RunComfy apply its own
        defaults (``aspect_ratio`` ``16:9``, ``num_images`` 1, ...). A user passing
        ``seed=None`` explicitly means "no seed", and ``"seed": null`` would not
        match the schema, which says integer. No field of a seed model accepts
        null, so nothing is lost by never sending one.
        """
        return self.model_dump(mode="json", exclude_none=True)


def invalid_input(model_id: str, problems: Iterable[str]) -> InvalidInputError:
    """The error for invalid inputs of ``model_id``: ``Invalid input for <model>: <p1>; <p2>``."""
    return InvalidInputError(f"Invalid input for {model_id}: " + "; ".join(problems))


def describe_validation_errors(model_cls: type[BaseModel], errors: Iterable[ErrorDetails]) -> list[str]:
    """One ``path: problem`` line per pydantic error, in words a DAG author can act on.

    ``path`` is the field name, with ``[i]`` for list items (``image_urls[2]``).
    Pydantic's own wording and its links to its docs are left out where we can
    say something more useful (the allowed values, the bounds).
    """
    lines = []
    for error in errors:
        path = _path(error["loc"])
        problem = _describe(model_cls, error)
        lines.append(f"{path}: {problem}" if path else problem)
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _describe(model_cls: type[BaseModel], error: ErrorDetails) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    field = error["loc"][0] if error["loc"] else None
    fields = list(model_cls.model_fields)
    bounds = _bounds(model_cls, field) if isinstance(field, str) else {}

    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(field), fields, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"is not an input of this model{hint}; its inputs are {', '.join(fields)}"
    if kind == "literal_error":
        allowed = _literal_values(model_cls, field)
        expected = ", ".join(str(v) for v in allowed) if allowed else ctx.get("expected", "")
        return f"{_short(value)} is not one of {expected}"
    if kind in ("greater_than_equal", "less_than_equal") and "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']} (got {_short(value)})"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']} (got {_short(value)})"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']} (got {_short(value)})"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters (got {len(value)})"
    if kind in ("too_short", "too_long"):
        low, high = bounds.get("min_length"), bounds.get("max_length")
        count = ctx.get("actual_length", "?")
        if low is not None and high is not None:
            return f"must have {low} to {high} items (got {count})"
        limit = f"at least {low}" if kind == "too_short" else f"at most {high}"
        return f"must have {limit} items (got {count})"
    if kind == "int_type":
        return f"must be an integer (got {_short(value)})"
    if kind == "string_type":
        return f"must be a string (got {_short(value)})"
    if kind == "list_type":
        return f"must be a list (got {_short(value)})"
    # Our own checks (image URLs) already speak plainly; so does the rest of pydantic, mostly.
    return error["msg"]


def _bounds(model_cls: type[BaseModel], field: str) -> dict[str, Any]:
    """The ``ge``/``le``/``min_length``/``max_length`` constraints declared on a top-level field."""
    info = model_cls.model_fields.get(field)
    bounds: dict[str, Any] = {}
    for constraint in info.metadata if info else ():
        for name in ("ge", "le", "min_length", "max_length"):
            if hasattr(constraint, name):
                bounds[name] = getattr(constraint, name)
    return bounds


def _literal_values(model_cls: type[BaseModel], field: object) -> list[Any]:
    """The values of the ``Literal`` in a field's annotation (through ``| None``), in declared order."""
    info = model_cls.model_fields.get(field) if isinstance(field, str) else None
    values: list[Any] = []
    pending = [info.annotation] if info else []
    while pending:
        annotation = pending.pop(0)
        if typing.get_origin(annotation) is Literal:
            values.extend(typing.get_args(annotation))
        else:
            pending.extend(typing.get_args(annotation))
    return values


def _short(value: object) -> str:
    """``repr(value)``, cut short: errors must not echo a 1,000-character prompt or a data URI."""
    shown = repr(value)
    if len(shown) > _SHOWN_VALUE_LENGTH:
        shown = shown[: _SHOWN_VALUE_LENGTH - 3] + "..."
    return shown
