"""Fixtures shared by the emulator's tests (the emulator itself comes from its pytest plugin).

``emu`` is the session emulator, reset for the test, with jobs that finish
at once; ``api`` is an httpx client on it that sends the emulator's token.
A test module that wants the plugin's default timings overrides ``emu``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    """The session emulator, reset, whose jobs finish the moment they are submitted."""
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    return runcomfy_emulator


@pytest.fixture
def api(emu: RunComfyEmulator) -> Iterator[httpx.Client]:
    """An httpx client on ``emu`` that sends its token (and decodes nothing it is not asked to)."""
    headers = {"Authorization": f"Bearer {emu.token}"}
    with httpx.Client(base_url=emu.base_url, headers=headers, timeout=10) as client:
        yield client
