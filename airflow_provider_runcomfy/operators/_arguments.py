"""The arguments every RunComfy task has, checked when the DAG is parsed: stdlib only, so parsing stays cheap.

Shared by the operators, the sensor and the batch operator (which, unlike them, does
not load the waiting machinery of ``_wait`` when a DAG file is parsed).
"""

from __future__ import annotations

from typing import Any


def max_output_bytes_or_default(value: int | None) -> int | None:
    """Check a ``max_output_bytes`` argument when the DAG is parsed; None keeps the default (200 MB).

    The download module is imported only when a value is given: a DAG file that keeps the
    default does not pay for it.
    """
    if value is None:
        return None
    from airflow_provider_runcomfy.client.download import check_max_output_bytes

    return check_max_output_bytes(value)


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
