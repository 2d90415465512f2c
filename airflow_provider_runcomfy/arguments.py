"""Checks of the operators' own arguments, run when a DAG file is parsed.

Standard library only: every DAG file that builds an operator pays for what is
imported here, so the checks live apart from the machinery they configure
(pre-flight, signing, the model catalog, budgets, downloads), which loads only in
``execute``. The operators, the sensor and the batch operator all check here, so a bad
value is refused the same way whichever of them it is given to.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any, Literal

PreflightMode = Literal["warn", "strict", "off"]
PREFLIGHT_MODES: tuple[PreflightMode, ...] = ("warn", "strict", "off")

OnSchemaUnavailable = Literal["warn", "fail"]
ON_SCHEMA_UNAVAILABLE: tuple[str, ...] = ("warn", "fail")

#: The longest a pre-signed URL can live: AWS's SigV4 limit (7 days), which gcsfs shares.
MAX_SIGN_EXPIRY = 7 * 24 * 3600


def check_preflight(value: object) -> PreflightMode:
    """``value`` if it is a pre-flight mode, else ``ValueError`` (checked when the DAG is parsed)."""
    if value not in PREFLIGHT_MODES:
        raise ValueError(f"preflight must be one of 'warn' (the default), 'strict' or 'off', not {value!r}.")
    return value


def check_sign_expiry(value: object) -> int | None:
    """``sign_expiry`` in seconds (an int or a ``timedelta``), or None for "from the timeout"; else ValueError."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 60 <= seconds <= MAX_SIGN_EXPIRY
    ):
        raise ValueError(
            f"sign_expiry must be between 60 seconds and 7 days (the longest S3 and GCS sign for), "
            f"not {value!r}."
        )
    return int(seconds)


def check_on_schema_unavailable(value: str) -> OnSchemaUnavailable:
    """The ``on_schema_unavailable`` argument, checked when the DAG is parsed."""
    if value not in ON_SCHEMA_UNAVAILABLE:
        raise ValueError(f"on_schema_unavailable must be 'warn' or 'fail', not {value!r}.")
    return value  # type: ignore[return-value]


def check_max_cost(value: Any) -> float | None:
    """``max_cost_usd`` as a float, or ``None`` (no budget); refuses what is not a sum of dollars."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"max_cost_usd must be a number of dollars, 0 or more, or None; not {value!r}.")
    return float(value)


def check_max_output_bytes(value: object) -> int:
    """Return ``value`` if it is a usable ``max_output_bytes`` (a positive int), else raise ``ValueError``.

    Operators check it when the DAG is parsed, so a typo is an import error, not a lost output.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"max_output_bytes must be a positive number of bytes, not {value!r}.")
    return value


def max_output_bytes_or_default(value: int | None) -> int | None:
    """Check a ``max_output_bytes`` argument when the DAG is parsed; None keeps the default (200 MB)."""
    return None if value is None else check_max_output_bytes(value)


def keep_wait_arguments(
    task: Any,
    runcomfy_conn_id: str,
    deferrable: bool,
    poll_interval: float,
    output_dir: Any,
    max_output_bytes: int | None,
) -> None:
    """Check and keep the arguments every RunComfy task has: the connection, the wait, the copies.

    Shared by the operators, the sensor and the batch operator, so a bad value is refused
    the same way (when the DAG is parsed) whichever of them it is given to.
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive, not {poll_interval!r}.")
    task.runcomfy_conn_id = runcomfy_conn_id
    task.deferrable = deferrable
    task.poll_interval = float(poll_interval)
    task.output_dir = output_dir
    task.max_output_bytes = max_output_bytes_or_default(max_output_bytes)
