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

#: How a JSON type (JSON Schema's name for it) reads in a problem.
TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "an object (a dict)",
    "null": "null",
}

#: pydantic's type errors, as the JSON type each asks for.
_PYDANTIC_TYPES = {"int_type": "integer", "string_type": "string", "list_type": "array"}


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
        path = field_path(error["loc"])
        problem = _describe(model_cls, error)
        lines.append(f"{path}: {problem}" if path else problem)
    return lines


def field_path(loc: tuple[int | str, ...]) -> str:
    """``image_urls[2]``, ``options.size``: where a problem is, as a DAG author writes it."""
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
        return not_one_of(value, _literal_values(model_cls, field) or [ctx.get("expected", "")])
    if kind in ("greater_than_equal", "less_than_equal"):
        lower = kind == "greater_than_equal"
        limit = ctx.get("ge" if lower else "le")
        return out_of_bounds(value, limit, lower=lower, low=bounds.get("ge"), high=bounds.get("le"))
    if kind == "string_too_long":
        return wrong_length(len(value), ctx["max_length"], lower=False)
    if kind in ("too_short", "too_long"):
        low, high = bounds.get("min_length"), bounds.get("max_length")
        lower = kind == "too_short"
        count = ctx.get("actual_length", "?")
        return wrong_count(count, low if lower else high, lower=lower, low=low, high=high)
    if kind in _PYDANTIC_TYPES:
        return wrong_type(value, [_PYDANTIC_TYPES[kind]])
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


def short(value: object) -> str:
    """``repr(value)``, cut short: errors must not echo a 1,000-character prompt or a data URI."""
    shown = repr(value)
    if len(shown) > _SHOWN_VALUE_LENGTH:
        shown = shown[: _SHOWN_VALUE_LENGTH - 3] + "..."
    return shown


# The words of a problem, shared with ``models.schema`` so that a model checked against its
# typed class and one checked against its published JSON Schema fail in the same sentences.


def not_one_of(value: object, allowed: Iterable[object]) -> str:
    """``'square' is not one of auto, 21:9, ...``."""
    return f"{short(value)} is not one of {', '.join(str(v) for v in allowed)}"


def wrong_type(value: object, kinds: Iterable[str]) -> str:
    """``must be an integer (got 'x')``; ``kinds`` are JSON Schema's type names."""
    wanted = " or ".join(TYPE_WORDS.get(str(k), str(k)) for k in kinds)
    return f"must be {wanted} (got {short(value)})"


def out_of_bounds(value: object, limit: object, *, lower: bool, low: object, high: object) -> str:
    """``must be between low and high`` when both are declared, else ``at least``/``at most`` ``limit``."""
    if low is not None and high is not None:
        return f"must be between {low} and {high} (got {short(value)})"
    return f"must be {_side(limit, lower)} (got {short(value)})"


def wrong_count(count: object, limit: object, *, lower: bool, low: object, high: object) -> str:
    """``must have low to high items`` when both are declared, else ``at least``/``at most`` ``limit``."""
    if low is not None and high is not None:
        return f"must have {low} to {high} items (got {count})"
    return f"must have {_side(limit, lower)} items (got {count})"


def wrong_length(length: int, limit: object, *, lower: bool) -> str:
    """``must be at most 2000 characters (got 2400)``."""
    return f"must be {_side(limit, lower)} characters (got {length})"


def _side(limit: object, lower: bool) -> str:
    return f"at least {limit}" if lower else f"at most {limit}"
