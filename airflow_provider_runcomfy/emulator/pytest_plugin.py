"""pytest fixtures for the RunComfy emulator, registered through the ``pytest11`` entry point.

Every pytest run in an environment with this provider installed loads this
module, so it imports nothing but pytest at import time; the server is
imported and started only when a test asks for a fixture.

Fixtures:

- ``runcomfy_emulator_config`` (session): the settings the emulator starts
  with; override it in a ``conftest.py`` to change timings for a suite.
- ``runcomfy_emulator_server`` (session): one emulator for the session.
- ``runcomfy_emulator`` (function): that emulator, reset (no jobs, faults,
  rules or journal; starting settings) before each test.
- ``runcomfy_emulator_conn_env`` (function): sets ``AIRFLOW_CONN_RUNCOMFY_DEFAULT``
  for the test (undone afterwards) and returns it, to pass to subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_runcomfy.emulator.server import RunComfyEmulator


@pytest.fixture(scope="session")
def runcomfy_emulator_config() -> dict[str, Any]:
    """``EmulatorConfig`` fields for the session's emulator: fast jobs, so tests finish quickly."""
    return {"queue_seconds": 0.2, "run_seconds": 0.5}


@pytest.fixture(scope="session")
def runcomfy_emulator_server(runcomfy_emulator_config: dict[str, Any]) -> Iterator[RunComfyEmulator]:
    """One emulator on a free loopback port for the session; ``runcomfy_emulator`` resets it per test."""
    from airflow_provider_runcomfy.emulator.server import RunComfyEmulator

    with RunComfyEmulator(**runcomfy_emulator_config) as emulator:
        yield emulator


@pytest.fixture
def runcomfy_emulator(runcomfy_emulator_server: RunComfyEmulator) -> Iterator[RunComfyEmulator]:
    """The session's emulator, reset for this test: no jobs, faults, rules or journal entries."""
    runcomfy_emulator_server.reset()
    yield runcomfy_emulator_server
    runcomfy_emulator_server.reset()


@pytest.fixture
def runcomfy_emulator_conn_env(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """``{"AIRFLOW_CONN_RUNCOMFY_DEFAULT": ...}`` pointing at the emulator, also set in ``os.environ``."""
    env = runcomfy_emulator.airflow_conn_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
