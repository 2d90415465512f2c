"""Checks on what goes into a URL, done before any request is sent."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_runcomfy.client.errors import InvalidInputError

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_request_id(request_id: object) -> str:
    """Return ``request_id`` if it is safe to put in a URL path, else raise ``InvalidInputError``."""
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise InvalidInputError(
            f"Invalid RunComfy request id {request_id!r}: expected 1 to 128 characters of "
            "letters, digits, '_' or '-' (the request_id returned by a submit)."
        )
    return request_id


def validate_model_id(model_id: object) -> str:
    """Return ``model_id`` if it is slash-separated ``[A-Za-z0-9._-]`` segments without ``.``/``..``."""
    if isinstance(model_id, str) and model_id:
        segments = model_id.split("/")
        if all(_MODEL_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
            return model_id
    raise InvalidInputError(
        f"Invalid RunComfy model id {model_id!r}: expected slash-separated segments of letters, "
        "digits, '.', '_' or '-', as on the model's API page "
        "(e.g. 'blackforestlabs/flux-1-kontext/pro/edit')."
    )


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or an address in 127.0.0.0/8 or ::1.

    ``*.localhost`` names are not trusted by name: whether they resolve to loopback is up
    to the resolver (RFC 6761 only asks it to), and DNS may answer anything for them.
    """
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def input_fingerprint(model_id: str, payload: Mapping[str, Any]) -> str:
    """Identifies a job's model and inputs (sha256 hex), so a retry with other inputs is a new job.

    Recorded with every intent and request id, and named in "outcome unknown" messages so a
    user can match a job in RunComfy's dashboard to the task that sent it.
    """
    blob = json.dumps({"model_id": model_id, "input": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
