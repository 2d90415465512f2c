"""Which connection a *Test* run names: the user's, not the API's random stand-in id.

``POST /api/v2/connections/test`` runs ``RunComfyHook.test_connection`` under a random
8-character connection id. The UI plugin's middleware (``plugins.connection_test``) knows
the id the user is testing and sets ``TESTED_CONNECTION`` for the request; the hook reads
it here when it words its messages. The variable lives in the hook's layer so that the
hook never imports the plugin: the plugin writes down, the hook reads.
"""

from __future__ import annotations

import os
from contextvars import ContextVar

#: The connection id whose test is running in this request (None outside one).
TESTED_CONNECTION: ContextVar[str | None] = ContextVar("runcomfy_tested_connection", default=None)


def tested_connection_id() -> str | None:
    """The id of the connection the UI is testing, when called inside ``POST /connections/test``."""
    return TESTED_CONNECTION.get()


def connection_named(conn_id: str) -> str:
    """How a *Test* message names connection ``conn_id``: ``Airflow connection '<id>'``.

    Inside a UI test (the plugin's middleware installed) the id is the one the user is testing;
    without the middleware an id that looks like the API's stand-in is "this Airflow connection".
    """
    real = tested_connection_id()
    if real:
        return f"Airflow connection {real!r}"
    if _looks_like_stand_in(conn_id):
        return "this Airflow connection"
    return f"Airflow connection {conn_id!r}"


def _looks_like_stand_in(conn_id: str) -> bool:
    """The API's stand-in id: 8 letters/digits, set only as an ``AIRFLOW_CONN_`` environment variable."""
    return (
        len(conn_id) == 8
        and conn_id.isalnum()
        and conn_id.isascii()
        and f"AIRFLOW_CONN_{conn_id.upper()}" in os.environ
    )
