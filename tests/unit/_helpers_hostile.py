"""What the two hostile-answer test modules share: a quick retry policy and a valid input."""

from __future__ import annotations

from airflow_provider_runcomfy.client import RetryPolicy
from airflow_provider_runcomfy.emulator import RunComfyEmulator

#: Retries that are over in well under a second, so a test sees every attempt without waiting.
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, max_total=20)


def flux_input(emu: RunComfyEmulator) -> dict[str, str]:
    return {"prompt": "make it blue", "image_url": emu.sample_url("portrait")}
