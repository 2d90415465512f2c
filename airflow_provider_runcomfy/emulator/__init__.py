"""An offline RunComfy Model API, for tests, CI and examples: no token, no internet.

Start one in-process with ``RunComfyEmulator`` (a context manager), from the
shell with ``runcomfy-emulator``, or in pytest with the ``runcomfy_emulator``
fixture. See docs/emulator.md.

Names are imported lazily (PEP 562): the pytest plugin lives in this
package and is loaded by every pytest run in an environment where the
provider is installed, so importing the package must not import FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_runcomfy.emulator.app import EmulatorApp, create_app
    from airflow_provider_runcomfy.emulator.config import DEFAULT_TOKEN, EmulatorConfig
    from airflow_provider_runcomfy.emulator.controls import EmulatorControls
    from airflow_provider_runcomfy.emulator.faults import Fault, Rule
    from airflow_provider_runcomfy.emulator.journal import Journal, JournalEntry
    from airflow_provider_runcomfy.emulator.models import FLUX_KONTEXT_PRO_EDIT, NANO_BANANA_EDIT
    from airflow_provider_runcomfy.emulator.remote import RemoteEmulator
    from airflow_provider_runcomfy.emulator.server import RunComfyEmulator
    from airflow_provider_runcomfy.emulator.state import EmulatorState, JobInfo

_EXPORTS = {
    "DEFAULT_TOKEN": "config",
    "EmulatorApp": "app",
    "EmulatorConfig": "config",
    "EmulatorControls": "controls",
    "EmulatorState": "state",
    "FLUX_KONTEXT_PRO_EDIT": "models",
    "Fault": "faults",
    "JobInfo": "state",
    "Journal": "journal",
    "JournalEntry": "journal",
    "NANO_BANANA_EDIT": "models",
    "RemoteEmulator": "remote",
    "Rule": "faults",
    "RunComfyEmulator": "server",
    "create_app": "app",
}

__all__ = [
    "DEFAULT_TOKEN",
    "FLUX_KONTEXT_PRO_EDIT",
    "NANO_BANANA_EDIT",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorControls",
    "EmulatorState",
    "Fault",
    "JobInfo",
    "Journal",
    "JournalEntry",
    "RemoteEmulator",
    "Rule",
    "RunComfyEmulator",
    "create_app",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
