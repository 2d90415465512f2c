"""The emulator's jobs: how each will run (``JobPlan``), what it is (``Job``), and a snapshot for tests.

Plain data, kept by ``state.EmulatorState`` and computed from its clock: a job is not
updated as time passes, its phase is worked out from when it was submitted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_runcomfy.emulator.faults import OutputKind


@dataclass(frozen=True)
class InputPicture:
    """An input image as the emulator got it: PNG bytes it can decode, or a seed to draw a stand-in from."""

    png: bytes | None = None
    stand_in_seed: str | None = None

    @functools.cached_property
    def identity(self) -> str:
        """What its outputs are cached under: a hash of the PNG (hashed once per job), or the seed."""
        return (
            "png:" + hashlib.sha256(self.png).hexdigest()
            if self.png is not None
            else f"seed:{self.stand_in_seed}"
        )


#: Where a job is in its life, as the emulator computes it from the clock.
Phase = Literal["in_queue", "in_progress", "succeeded", "failed", "cancelled"]


@dataclass(frozen=True)
class JobPlan:
    """How a job will run and what it will produce, fixed at submit from the input, rules and config."""

    prompt: str
    seed: int | None
    image_urls: tuple[tuple[str, str], ...]
    """``(field label, url)`` of each input image."""
    aspect: tuple[int, int] | None
    output_kind: OutputKind
    num_outputs: int
    output_bytes: int | None
    fail_message: str | None
    queue_seconds: float
    run_seconds: float
    long_side: int
    held: bool = False
    """Queued until released (a rule's ``hold``), whatever ``queue_seconds`` says."""


@dataclass
class Job:
    """One submitted request."""

    request_id: str
    model_id: str
    owner: str
    """The token that submitted it: only that token may read or cancel it (403001)."""
    input: dict[str, Any]
    plan: JobPlan
    created_at: float
    cost_usd: float
    cancelled_at: float | None = None
    expired: bool = False
    inputs: list[InputPicture] | None = None
    """The resolved input pictures, once fetched."""
    input_error: str | None = None
    """Why an input could not be fetched: the job fails with this message."""
    inputs_task: Any = None
    """The asyncio task fetching the inputs (owned by the server's event loop)."""
    own_bases: tuple[str, ...] = ()
    """The base URLs under which input URLs point at the emulator itself."""
    seq: int = 0
    """Its place in submit order (the queue index's key)."""
    released_at: float | None = None
    """When a held job was let out of the queue (``EmulatorState.release``)."""

    @property
    def leaves_queue_at(self) -> float:
        """When the job starts running: ``queue_seconds`` after submit, or its release (never while held)."""
        if self.plan.held:
            return self.released_at if self.released_at is not None else math.inf
        return self.created_at + self.plan.queue_seconds

    @property
    def finished_at(self) -> float:
        """When the job finishes (or did): cancelled, or its run time after it left the queue."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        return self.leaves_queue_at + self.plan.run_seconds

    @property
    def failure(self) -> str | None:
        """Why the job fails, as far as known: a rule's message or an input that could not be fetched."""
        return self.plan.fail_message or self.input_error

    def phase(self, now: float) -> Phase:
        """Where the job is at ``now``; ``succeeded`` means "not known to fail" until inputs are resolved."""
        if self.cancelled_at is not None:
            return "cancelled"
        if now < self.leaves_queue_at:
            return "in_queue"
        if now < self.finished_at:
            return "in_progress"
        return "failed" if self.failure else "succeeded"


@dataclass
class JobInfo:
    """A snapshot of a job for tests: what it is, where it is, what it cost."""

    request_id: str
    model_id: str
    input: dict[str, Any]
    phase: str
    created_at: float
    finished_at: float
    cost_usd: float
    num_outputs: int
    error: str | None
    expired: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the admin API (a held job's unknown end is ``None``: JSON has no inf)."""
        data = dataclasses.asdict(self)
        if math.isinf(self.finished_at):
            data["finished_at"] = None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        """The inverse of ``to_dict``."""
        if data.get("finished_at") is None:
            data = {**data, "finished_at": math.inf}
        return cls(**data)
