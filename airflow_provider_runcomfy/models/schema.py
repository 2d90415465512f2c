r"""Inputs checked against a model's published JSON Schema, with messages a DAG author can act on.

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

Its regular expressions (``pattern``, ``patternProperties``) are not trusted either:
Python's ``re`` backtracks, and ``^(\w+\s?)*$`` took a minute of CPU on a 48-character
prompt, doubling with each character. They run on RE2 (``google-re2``), whose time is
linear in the input whatever the pattern. A pattern RE2 cannot run (a backreference, a
lookaround, one too large for its memory bound) is skipped -- that one check only, every
other keyword still applies -- and named by ``unevaluable_patterns`` so the caller warns,
or refuses with ``on_schema_unavailable="fail"``. Skipping rather than refusing the model:
RunComfy checks the input itself when the job arrives, while refusing would make a model
unusable for a pattern we merely cannot run safely (see docs/retries-and-billing.md).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import re2
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
    return _linear(cls)(schema)


def unevaluable_patterns(schema: Mapping[str, Any]) -> list[str]:
    """One ``field: ...`` line per published pattern RE2 cannot run: those checks are skipped.

    Found by walking the schema (``properties`` name the fields), so the caller can say
    which check is missing before any input is checked, once per model.
    """
    found = []
    for where, pattern in _published_patterns(schema, "", 0):
        why = _unevaluable(pattern)
        if why is not None:
            found.append(
                f"{where or 'input'}: the pattern {_cut(pattern, 80)!r} cannot be evaluated in linear time "
                f"({why}); this check is skipped"
            )
    return found


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
        extras = [k for k in instance if k not in declared and not _matches_any(schema, k)]
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
    if kind in ("minLength", "maxLength") and isinstance(instance, str):
        return wrong_length(len(instance), value, lower=kind == "minLength")
    instance = _clip(instance)  # a 6 MiB data: URI is shown by its start, not repr()'d whole
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


def _search(pattern: str, text: str) -> bool | None:
    """Whether RE2 finds ``pattern`` in ``text``; None when RE2 cannot run the pattern (skipped).

    The text goes as UTF-8 bytes: for a ``str`` the binding maps every match offset back to
    characters, a pass that costs more than the search itself on a data URI of megabytes.
    """
    compiled = _compiled(pattern)
    if isinstance(compiled, str):
        return None
    return compiled.search(text.encode("utf-8", "surrogatepass")) is not None


def _clip(value: Any) -> Any:
    """A long text cut before it is shown (``short`` would ``repr`` it whole first)."""
    return value[:_SHOWN_CHARS] + "..." if isinstance(value, str) and len(value) > _SHOWN_CHARS else value


#: Characters of an input kept before it is shown in a problem (``short`` cuts further).
_SHOWN_CHARS = 200


#: Memory RE2 may use for one compiled pattern: a pattern needing more is not run (skipped).
_RE2_MAX_MEM = 8 << 20


@functools.lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    """The RE2 program for ``pattern``, or why RE2 cannot run it (cached: a batch checks each item)."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0] if exc.args else exc
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        return _cut(text, 80)
    except (TypeError, ValueError) as exc:  # not a str, or a NUL the binding refuses
        return _cut(str(exc), 80)


def _unevaluable(pattern: object) -> str | None:
    compiled = _compiled(pattern) if isinstance(pattern, str) else "not a string"
    return compiled if isinstance(compiled, str) else None


#: Keywords whose values are data, not subschemas: a ``pattern`` key inside them is not a pattern.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example", "required"})
#: Deeper than this, a schema is not walked for patterns (a hostile one can nest without end).
_MAX_DEPTH = 64


def _published_patterns(node: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    """``(field path, pattern)`` of every ``pattern`` and ``patternProperties`` key under ``node``."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, list):
        for item in node:
            yield from _published_patterns(item, path, depth + 1)
        return
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        if key == "pattern" and isinstance(value, str):
            yield path, value
        elif key == "patternProperties" and isinstance(value, Mapping):
            for pattern, subschema in value.items():
                yield _join(path, f"(keys matching {_cut(str(pattern), 40)!r})"), pattern
                yield from _published_patterns(subschema, path, depth + 1)
        elif key == "properties" and isinstance(value, Mapping):
            for name, subschema in value.items():
                yield from _published_patterns(subschema, _join(path, name), depth + 1)
        elif key not in _DATA_KEYWORDS:
            yield from _published_patterns(value, path, depth + 1)


# The keywords that run a regular expression, on RE2. A pattern RE2 cannot run matches nothing
# and refuses nothing: its check is skipped (``unevaluable_patterns`` says so).


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and _search(pattern, instance) is False:
        yield ValidationError(f"{short(_clip(instance))} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _matches_any(schema: Any, key: str) -> bool:
    """Whether ``key`` is claimed by one of the schema's ``patternProperties`` (RE2; skipped ones claim)."""
    patterns = schema.get("patternProperties") or {}
    # A skipped pattern cannot say "not mine": the key is let through rather than refused.
    return any(_search(pattern, key) is not False for pattern in patterns)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties") or {}
    extras = [key for key in instance if key not in properties and not _matches_any(schema, key)]
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif extra is False and extras:
        yield ValidationError(
            f"Additional properties are not allowed ({', '.join(map(repr, sorted(extras)))})"
        )


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema, 0)
    bad = [
        key
        for key in instance
        if key not in evaluated
        and next(validator.descend(instance[key], unevaluated, path=key, schema_path=key), None) is not None
    ]
    if bad:
        yield ValidationError(f"Unevaluated properties are not allowed ({', '.join(map(repr, sorted(bad)))})")


def _evaluated_keys(validator: Any, instance: Any, schema: Any, depth: int) -> set[str]:
    """The keys of ``instance`` some keyword of ``schema`` evaluated (jsonschema's rule, RE2 for patterns)."""
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return set()
    keys: set[str] = set()
    for ref in ("$ref", "$dynamicRef", "$recursiveRef"):
        if isinstance(schema.get(ref), str):
            resolved = validator._resolver.lookup(schema[ref])
            inner = validator.evolve(schema=resolved.contents, _resolver=resolved.resolver)
            keys |= _evaluated_keys(inner, instance, resolved.contents, depth + 1)
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            keys |= {k for k, v in instance.items() if next(validator.descend(v, subschema), None) is None}
    if "patternProperties" in schema:
        keys |= {key for key in instance if _matches_any(schema, key)}
    for name, subschema in (schema.get("dependentSchemas") or {}).items():
        if name in instance:
            keys |= _evaluated_keys(validator, instance, subschema, depth + 1)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword) or []:
            if next(validator.descend(instance, subschema), None) is None:
                keys |= _evaluated_keys(validator, instance, subschema, depth + 1)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"], depth + 1)
            keys |= _evaluated_keys(validator, instance, schema.get("then"), depth + 1)
        else:
            keys |= _evaluated_keys(validator, instance, schema.get("else"), depth + 1)
    return keys


@functools.cache
def _linear(cls: type[Validator]) -> type[Validator]:
    """``cls`` with every keyword that runs a regular expression on RE2 (one class per draft)."""
    replaced: dict[str, Any] = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    if "unevaluatedProperties" in cls.VALIDATORS:
        replaced["unevaluatedProperties"] = _unevaluated_properties
    return validators.extend(cls, replaced)


def _cut(text: str, limit: int = 200) -> str:
    """Text from the network (a schema's own words), cut to a line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
