"""Inputs checked against a model's published JSON Schema, with messages a DAG author can act on.

Only the two seed models have typed input classes here; RunComfy has many more
models, each publishing its input as a JSON Schema (``GET /v1/models/{id}``).
This module checks an input against such a schema with ``jsonschema`` (already
an Airflow dependency) and words each problem as the seed models' errors are
worded (see ``models.base``): one ``field: problem`` entry per error::

    Invalid input for acme/video/generate: duration: 12 is not one of 5, 10; prompt: is required

The schema comes from the network, so it is not trusted: ``$ref`` to another
document is never fetched (jsonschema's ``referencing`` retrieves nothing by
default), a schema that is not valid JSON Schema is reported as unusable rather
than applied, and ``format`` is not asserted (RunComfy's own Ajv forms do not
either, and a wrong guess would refuse a valid input).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator

from airflow_provider_runcomfy.models.base import (
    field_path,
    not_one_of,
    out_of_bounds,
    short,
    wrong_count,
    wrong_length,
    wrong_type,
)

#: More problems than this are summarised ("... and N more"): one message, not a page.
MAX_PROBLEMS = 10


class UnusableSchemaError(ValueError):
    """The published schema cannot be applied (not valid JSON Schema, or an unresolvable ``$ref``)."""


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    """A validator for ``schema`` (its ``$schema`` draft, 2020-12 when it names none).

    :raises UnusableSchemaError: when ``schema`` is not a valid JSON Schema.
    """
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise UnusableSchemaError(f"it is not a valid JSON Schema ({_cut(exc.message)})") from None
    return cls(schema)


def input_problems(validator: Validator, payload: Mapping[str, Any]) -> list[str]:
    """One ``path: problem`` line per way ``payload`` breaks the schema, by field; [] when valid.

    :raises UnusableSchemaError: when the schema cannot be applied (e.g. a ``$ref`` to another document).
    """
    try:
        errors = list(validator.iter_errors(payload))
    except (SchemaError, RecursionError) as exc:
        raise UnusableSchemaError(f"it cannot be applied ({type(exc).__name__})") from None
    except Exception as exc:  # referencing's errors: an unresolvable $ref and the like
        raise UnusableSchemaError(f"it cannot be applied ({_cut(str(exc))})") from None
    # De-duplicated ("required" reports every missing field once per error) and sorted: by field.
    found = sorted({line for error in errors for line in _describe(error)})
    if len(found) > MAX_PROBLEMS:
        found = [*found[:MAX_PROBLEMS], f"... and {len(found) - MAX_PROBLEMS} more problem(s)"]
    return found


def undeclared_inputs(schema: Mapping[str, Any], payload: Mapping[str, Any]) -> list[str]:
    """Inputs the schema does not name although it lets them through (no ``additionalProperties: false``).

    RunComfy probably ignores them, so a misspelt optional input would run a paid job
    with the default: worth a warning even when the schema allows it.
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties or schema.get("additionalProperties") is False:
        return []
    return [key for key in payload if key not in properties]


def _describe(error: ValidationError) -> list[str]:
    """The ``path: problem`` lines of one jsonschema error."""
    path = field_path(tuple(error.absolute_path))
    kind, value, instance = error.validator, error.validator_value, error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}

    if kind == "required" and isinstance(instance, Mapping):
        missing = [name for name in value if name not in instance]
        return [f"{_join(path, name)}: is required" for name in missing]
    if kind == "additionalProperties" and isinstance(instance, Mapping):
        declared = list(schema.get("properties") or {})
        patterns = list(schema.get("patternProperties") or {})
        extras = [k for k in instance if k not in declared and not any(_search(p, k) for p in patterns)]
        return [f"{_join(path, key)}: {_not_an_input(key, declared, top=not path)}" for key in extras]
    if kind in ("anyOf", "oneOf") and error.context:
        # ``X | None`` is published as anyOf [X, null]: the null branch's complaint says nothing useful.
        useful = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        if useful:
            best = best_match(useful)
            if best is not None:
                return _describe(best)
    problem = _problem(kind, value, instance, schema, error)
    return [f"{path}: {problem}" if path else problem]


def _problem(kind: Any, value: Any, instance: Any, schema: Mapping[str, Any], error: ValidationError) -> str:
    """What is wrong with one value, in the words of ``models.base``."""
    if kind == "enum":
        return not_one_of(instance, value)
    if kind == "const":
        return f"must be {short(value)} (got {short(instance)})"
    if kind == "type":
        return wrong_type(instance, [value] if isinstance(value, str) else value)
    if kind in ("minimum", "maximum"):
        low, high = schema.get("minimum"), schema.get("maximum")
        return out_of_bounds(instance, value, lower=kind == "minimum", low=low, high=high)
    if kind == "exclusiveMinimum":
        return f"must be greater than {value} (got {short(instance)})"
    if kind == "exclusiveMaximum":
        return f"must be less than {value} (got {short(instance)})"
    if kind == "multipleOf":
        return f"must be a multiple of {value} (got {short(instance)})"
    if kind in ("minLength", "maxLength") and isinstance(instance, str):
        return wrong_length(len(instance), value, lower=kind == "minLength")
    if kind in ("minItems", "maxItems") and isinstance(instance, list):
        low, high = schema.get("minItems"), schema.get("maxItems")
        return wrong_count(len(instance), value, lower=kind == "minItems", low=low, high=high)
    if kind == "pattern":
        return f"{short(instance)} does not match the pattern {_cut(str(value), 80)!r}"
    if kind == "uniqueItems":
        return "must not list the same item twice"
    return _cut(error.message)


def _not_an_input(key: str, declared: list[str], *, top: bool) -> str:
    close = difflib.get_close_matches(key, declared, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    where = "an input of this model" if top else "accepted here"
    known = f"; its inputs are {', '.join(declared)}" if top and declared else ""
    return f"is not {where}{hint}{known}"


def _join(path: str, name: object) -> str:
    return f"{path}.{name}" if path else str(name)


def _search(pattern: str, key: str) -> bool:
    try:
        return re.search(pattern, key) is not None
    except re.error:
        return False


def _cut(text: str, limit: int = 200) -> str:
    """Text from the network (a schema's own words), cut to a line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
