"""Fixtures shared by the emulator's tests (the emulator itself comes from its pytest plugin).

``emu`` is the session emulator, reset for the test, with jobs that finish
at once; ``api`` is an httpx client on it that sends the emulator's token;
``admin`` is an httpx client on its admin API. A test module that wants the
plugin's default timings overrides ``emu``. ``clocked`` is an emulator of
the test's own with a clock that moves only when the test moves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from airflow_provider_runcomfy.client import AsyncRunComfyClient
from airflow_provider_runcomfy.client.retry import RetryPolicy
from airflow_provider_runcomfy.emulator import RunComfyEmulator

# Hypothesis' timing checks (an example slower than 200 ms, inputs generated slowly) judge the
# machine, not the code: with the integration suite beside this one on two cores they failed
# a property test that passes unloaded. Every example is still generated and checked.
settings.register_profile("shared-cores", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-cores")


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


@pytest.fixture
def admin(emu: RunComfyEmulator) -> Iterator[httpx.Client]:
    """An httpx client on ``emu``'s admin API (``/_emulator``), as a test or a browser would call it."""
    with httpx.Client(base_url=emu.base_url + "/_emulator", timeout=10) as client:
        yield client


class FakeClock:
    """A clock the test moves by hand, so state changes are exact and instant."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked() -> Iterator[tuple[RunComfyEmulator, FakeClock, httpx.Client]]:
    """An emulator of its own whose clock only moves when the test says so (queue 10 s, run 20 s)."""
    clock = FakeClock()
    with RunComfyEmulator(queue_seconds=10, run_seconds=20) as emulator:
        emulator.state.clock = clock
        headers = {"Authorization": f"Bearer {emulator.token}"}
        with httpx.Client(base_url=emulator.base_url, headers=headers, timeout=10) as client:
            yield emulator, clock, client


@pytest.fixture
def queued_emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    """The session emulator, reset, whose jobs stay queued: nothing finishes while a test looks."""
    runcomfy_emulator.set_config(queue_seconds=60, run_seconds=0)
    return runcomfy_emulator


@pytest.fixture
async def queued_client(queued_emu: RunComfyEmulator) -> AsyncIterator[AsyncRunComfyClient]:
    """An async client on ``queued_emu`` that tries each call once (a refusal shows as it is)."""
    once = RetryPolicy(max_attempts=1)
    async with AsyncRunComfyClient(queued_emu.token, base_url=queued_emu.base_url, retry=once) as client:
        yield client
