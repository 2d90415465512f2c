"""Which models have typed inputs, and the one function that checks any model's inputs.

``validate_input`` is what runs before a submit: for a seed model it checks
the inputs against the typed model; for any other RunComfy model (there are
many, with schemas this package does not know) it checks only that the
inputs are a JSON object, and leaves the schema to RunComfy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_runcomfy.client._validation import validate_model_id
from airflow_provider_runcomfy.models.base import ModelInput, invalid_input
from airflow_provider_runcomfy.models.image_url import as_references
from airflow_provider_runcomfy.models.seeds import FluxKontextProEditInput, NanoBananaEditInput

#: The typed input class of each model that has one, keyed by RunComfy model id.
INPUT_MODELS: dict[str, type[ModelInput]] = {
    cls.model_id: cls for cls in (FluxKontextProEditInput, NanoBananaEditInput)
}


def validate_input(model_id: str, payload: Mapping[str, Any] | ModelInput) -> dict[str, Any]:
    """Check the inputs of ``model_id`` and return the JSON request body to submit.

    :param model_id: a RunComfy model id, e.g. ``google/nano-banana/edit``.
    :param payload: the inputs, as a mapping of field names to values, or (for a
        model in :data:`INPUT_MODELS`) an instance of its input class.
    :return: a new plain ``dict``: for a typed model its :meth:`ModelInput.to_payload`
        (unset optional inputs left out); for any other model a deep copy of the
        mapping as JSON would carry it.
    :raises InvalidInputError: naming the model, each bad field and what it accepts.
    """
    validate_model_id(model_id)
    input_class = INPUT_MODELS.get(model_id)

    if isinstance(payload, ModelInput):
        if input_class is None or not isinstance(payload, input_class):
            expected = f"a {input_class.__name__} or " if input_class else ""
            raise invalid_input(
                model_id,
                [
                    f"got a {type(payload).__name__}, the input of {payload.model_id}; "
                    f"pass {expected}a dict of this model's inputs"
                ],
            )
        # Checked again from its payload: ``frozen`` does not stop a list field
        # from being mutated after construction, and model_construct() skips checks.
        payload = payload.to_payload()

    if not isinstance(payload, Mapping):
        raise invalid_input(
            model_id,
            [f"inputs must be a JSON object (a dict of input names to values), not {type(payload).__name__}"],
        )
    bad_keys = [key for key in payload if not isinstance(key, str)]
    if bad_keys:
        raise invalid_input(model_id, [f"input names must be strings, not {key!r}" for key in bad_keys])

    if input_class is not None:
        return input_class(**payload).to_payload()
    # A path object (``ObjectStoragePath``, ``pathlib.Path``) is not JSON: it travels as its string
    # form, which ``airflow_provider_runcomfy.sources`` signs or inlines before the submit.
    return _json_object(model_id, {key: as_references(value) for key, value in payload.items()})


def _json_object(model_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``payload`` as the request would carry it, or an error naming each bad input."""
    problems = []
    for key, value in payload.items():
        try:
            # allow_nan=False: NaN and Infinity are not JSON, and RunComfy would reject the body.
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            problems.append(f"{key}: is not JSON-serialisable ({exc})")
    if problems:
        raise invalid_input(model_id, problems)
    # The round trip returns exactly what goes on the wire (tuples become lists),
    # detached from the caller's objects.
    copy: dict[str, Any] = json.loads(json.dumps(dict(payload), allow_nan=False))
    return copy
