"""The errors of preparing inputs: each is bad input, found before anything is paid for.

They are ``InvalidInputError`` subclasses, so the operators fail the task
without retries (no retry fixes a missing file) and the batch operator
reports the item as invalid, like any other bad input.
"""

from __future__ import annotations

from airflow_provider_runcomfy.client.errors import InvalidInputError


class InputSourceError(InvalidInputError):
    """An input file in storage cannot be sent: missing, not an image, too large, or unreadable."""


class InputCheckError(InvalidInputError):
    """An https input failed its pre-flight: a 4xx, not an image, or over the size guide."""


class InputUnreachableError(InputCheckError):
    """The worker could not reach an https input (``preflight="strict"`` only; otherwise a warning)."""
