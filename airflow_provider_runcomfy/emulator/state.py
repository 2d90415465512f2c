"""The emulator's memory: jobs, faults, rules, the journal and the config, behind one lock.

Nothing here knows HTTP. A job's state is computed from the clock each time
it is looked at (``in_queue`` until ``created_at + queue_seconds``, then
``in_progress`` for ``run_seconds``, then finished), so there is no
background task to drift, stall or leak. The lock exists because control
calls come from the test's thread while the server runs in another.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.models import ModelSpec, OutputKind, parse_aspect_ratio
from airflow_provider_runcomfy.emulator.render import InputPicture, RenderCache

#: Endpoints as the journal and faults name them; ``any`` (faults only) matches all of them.
ENDPOINTS = ("submit", "status", "result", "cancel", "model", "file")
FAULT_ENDPOINTS = (*ENDPOINTS, "any")
FAULT_KINDS = ("http", "error_200", "delay", "drop", "truncate")
OUTPUT_KINDS = ("image", "images", "video", "videos", "none")

#: Where a job is in its life, as the emulator computes it from the clock.
Phase = Literal["in_queue", "in_progress", "succeeded", "failed", "cancelled"]


@dataclass
class Fault:
    """A planned misbehaviour of one endpoint (see ``EmulatorState.add_fault``)."""

    id: int
    endpoint: str
    kind: str
    times: int | None = 1
    """How many more requests it hits; ``None``: every one until cleared."""
    request_id: str | None = None
    status: int | None = None
    error_code: int | None = None
    error_message: str | None = None
    retry_after: float | None = None
    seconds: float | None = None
    after_bytes: int | None = None
    hits: int = 0

    def matches(self, endpoint: str, request_id: str | None) -> bool:
        """Whether this fault applies to a request of ``endpoint`` about ``request_id``."""
        if self.times is not None and self.times <= 0:
            return False
        if self.endpoint not in ("any", endpoint):
            return False
        return self.request_id is None or self.request_id == request_id

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the admin API."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """The inverse of ``to_dict``."""
        return cls(**data)


@dataclass
class Rule:
    """How to run the jobs it matches (see ``EmulatorState.add_rule``)."""

    id: int
    prompt_contains: str | None = None
    model_id: str | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    fail_message: str | None = None
    num_outputs: int | None = None
    output_bytes: int | None = None
    output_kind: str | None = None
    hits: int = 0

    def matches(self, model_id: str, prompt: str) -> bool:
        """Whether a job of ``model_id`` with ``prompt`` falls under this rule (no criteria: every job)."""
        if self.model_id is not None and self.model_id != model_id:
            return False
        return self.prompt_contains is None or self.prompt_contains in prompt

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the admin API."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        """The inverse of ``to_dict``."""
        return cls(**data)


@dataclass
class JournalEntry:
    """One API or file request the emulator received, and what it answered."""

    endpoint: str
    """``submit``, ``status``, ``result``, ``cancel``, ``model``, ``file`` or ``sample``."""
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Request headers, names lowercased (``authorization`` included: it is the emulator's own token)."""
    json: Any
    """The JSON body, or ``None`` (no body, or not JSON)."""
    status_code: int | None
    """The HTTP status answered; ``None`` when the connection was dropped (or not answered yet)."""
    request_id: str | None
    at: float
    """``time.time()`` when the request arrived."""
    model_id: str | None = None
    fault: str | None = None
    """The kind of fault that hit this request, if one did."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for the admin API."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalEntry:
        """The inverse of ``to_dict``."""
        return cls(**data)


class Journal:
    """The requests the emulator received, oldest first: what tests assert on.

    Reads return copies, so a test can hold on to them while the server
    keeps recording. Admin (``/_emulator/``) calls are never recorded.
    """

    def __init__(self, entries: list[JournalEntry] | None = None) -> None:
        self._entries = list(entries or [])
        self._lock = threading.Lock()

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Append ``entry`` (the server fills in its ``status_code`` once known)."""
        with self._lock:
            self._entries.append(entry)
        return entry

    @property
    def entries(self) -> list[JournalEntry]:
        """A copy of every entry."""
        with self._lock:
            return [dataclasses.replace(e) for e in self._entries]

    def of(self, endpoint: str | None = None, *, request_id: str | None = None) -> list[JournalEntry]:
        """The entries of ``endpoint`` (all when ``None``), optionally only those about ``request_id``."""
        return [
            e
            for e in self.entries
            if (endpoint is None or e.endpoint == endpoint)
            and (request_id is None or e.request_id == request_id)
        ]

    def count(self, endpoint: str | None = None, *, request_id: str | None = None) -> int:
        """How many requests ``of(endpoint, request_id=...)`` holds."""
        return len(self.of(endpoint, request_id=request_id))

    def last(self, endpoint: str | None = None) -> JournalEntry | None:
        """The most recent entry of ``endpoint``, or ``None``."""
        found = self.of(endpoint)
        return found[-1] if found else None

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def to_list(self) -> list[dict[str, Any]]:
        """Every entry as a dict, for the admin API."""
        return [e.to_dict() for e in self.entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[JournalEntry]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> JournalEntry:
        return self.entries[index]

    def __repr__(self) -> str:
        return f"Journal({[f'{e.method} {e.path} -> {e.status_code}' for e in self.entries]})"


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

    @property
    def finished_at(self) -> float:
        """When the job finishes (or did): cancelled, or queued plus run time after submit."""
        if self.cancelled_at is not None:
            return self.cancelled_at
        return self.created_at + self.plan.queue_seconds + self.plan.run_seconds

    @property
    def failure(self) -> str | None:
        """Why the job fails, as far as known: a rule's message or an input that could not be fetched."""
        return self.plan.fail_message or self.input_error

    def phase(self, now: float) -> Phase:
        """Where the job is at ``now``; ``succeeded`` means "not known to fail" until inputs are resolved."""
        if self.cancelled_at is not None:
            return "cancelled"
        if now < self.created_at + self.plan.queue_seconds:
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
        """A JSON-ready copy, for the admin API."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobInfo:
        """The inverse of ``to_dict``."""
        return cls(**data)


class InsufficientBalance(Exception):
    """A submit would take the balance below zero (400002)."""


class EmulatorState:
    """All the emulator remembers, and the controls tests use to steer it.

    :param config: the settings to start with; ``reset()`` returns to them.
    :param clock: seconds since the epoch; tests of the emulator may pass a fake one.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._initial = config or EmulatorConfig()
        self.config = self._initial.model_copy(deep=True)
        self.clock = clock
        self.journal = Journal()
        self.renders = RenderCache()
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._faults: list[Fault] = []
        self._rules: list[Rule] = []
        self._ids = itertools.count(1)

    # -- controls ---------------------------------------------------------------------------

    def set_config(self, **changes: Any) -> EmulatorConfig:
        """Change settings (validated; unknown names raise). Returns the new config."""
        with self._lock:
            self.config = self.config.updated(**changes)
            return self.config

    def reset(self) -> None:
        """Forget jobs, faults, rules and the journal, and return to the starting config."""
        with self._lock:
            self._jobs.clear()
            self._faults.clear()
            self._rules.clear()
            self.journal.clear()
            self.renders.clear()
            self.config = self._initial.model_copy(deep=True)

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        times: int | None = 1,
        request_id: str | None = None,
        status: int | None = None,
        error_code: int | None = None,
        error_message: str | None = None,
        retry_after: float | None = None,
        seconds: float | None = None,
        after_bytes: int | None = None,
    ) -> Fault:
        """Make the next ``times`` requests to ``endpoint`` misbehave (``times=None``: until cleared).

        Kinds: ``http`` answers ``status`` (a JSON error body when
        ``error_code`` is given, none otherwise; ``Retry-After`` when
        ``retry_after`` is); ``error_200`` answers 200 with a top-level
        ``error_code`` (default 500001); ``delay`` waits ``seconds`` then answers
        normally; ``drop`` closes the connection without an answer; ``truncate``
        sends the headers with the full ``Content-Length``, ``after_bytes``
        bytes of the body (default 0), then closes. On ``submit`` and
        ``cancel``, ``delay``/``drop``/``truncate`` act after the job was
        created or cancelled: the caller loses the answer, not the effect.
        ``request_id`` limits the fault to requests about that job.
        """
        if endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {FAULT_ENDPOINTS}, not {endpoint!r}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}, not {kind!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        if kind == "http" and (status is None or not 100 <= status <= 599):
            raise ValueError("an 'http' fault needs status=<100..599>")
        if kind == "delay" and (seconds is None or seconds < 0):
            raise ValueError("a 'delay' fault needs seconds=<0 or more>")
        if kind == "error_200" and error_code is None:
            error_code = 500001
        if kind == "truncate":
            after_bytes = after_bytes or 0
        with self._lock:
            fault = Fault(
                id=next(self._ids),
                endpoint=endpoint,
                kind=kind,
                times=times,
                request_id=request_id,
                status=status,
                error_code=error_code,
                error_message=error_message,
                retry_after=retry_after,
                seconds=seconds,
                after_bytes=after_bytes,
            )
            self._faults.append(fault)
            return dataclasses.replace(fault)

    @property
    def faults(self) -> list[Fault]:
        """Copies of the faults still planned (and those used up, with their ``hits``)."""
        with self._lock:
            return [dataclasses.replace(f) for f in self._faults]

    def clear_faults(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def add_rule(
        self,
        prompt_contains: str | None = None,
        model_id: str | None = None,
        queue_seconds: float | None = None,
        run_seconds: float | None = None,
        fail_message: str | None = None,
        num_outputs: int | None = None,
        output_bytes: int | None = None,
        output_kind: str | None = None,
    ) -> Rule:
        """Decide how matching jobs run; rules are tried in order at submit and the first match wins.

        A job matches when its ``model_id`` equals ``model_id`` and its
        ``prompt`` contains ``prompt_contains`` (each when given). The rule can
        change its timing, make it fail with ``fail_message``, change how many
        outputs it has (``num_outputs``) and of which kind (``output_kind``:
        ``image``, ``images``, ``video``, ``videos`` or ``none`` for an empty
        output), and pad its files to about ``output_bytes`` bytes.
        """
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, not {output_kind!r}")
        if num_outputs is not None and not 1 <= num_outputs <= 100:
            raise ValueError("num_outputs must be between 1 and 100")
        for name, value in (("queue_seconds", queue_seconds), ("run_seconds", run_seconds)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if output_bytes is not None and not 0 <= output_bytes <= 512 * 1024 * 1024:
            raise ValueError("output_bytes must be between 0 and 512 MiB")
        with self._lock:
            rule = Rule(
                id=next(self._ids),
                prompt_contains=prompt_contains,
                model_id=model_id,
                queue_seconds=queue_seconds,
                run_seconds=run_seconds,
                fail_message=fail_message,
                num_outputs=num_outputs,
                output_bytes=output_bytes,
                output_kind=output_kind,
            )
            self._rules.append(rule)
            return dataclasses.replace(rule)

    @property
    def rules(self) -> list[Rule]:
        """Copies of the rules, in the order they are tried."""
        with self._lock:
            return [dataclasses.replace(r) for r in self._rules]

    def clear_rules(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def expire(self, request_id: str) -> bool:
        """Make a job answer 404001 from now on, as if its results had expired. ``False`` if unknown."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return False
            job.expired = True
            return True

    @property
    def jobs(self) -> list[JobInfo]:
        """A snapshot of every job, oldest first (expired ones included, marked ``expired``)."""
        with self._lock:
            return [self._info(job) for job in self._jobs.values()]

    def job(self, request_id: str) -> JobInfo | None:
        """A snapshot of one job, or ``None``."""
        with self._lock:
            job = self._jobs.get(request_id)
            return self._info(job) if job else None

    def _info(self, job: Job) -> JobInfo:
        return JobInfo(
            request_id=job.request_id,
            model_id=job.model_id,
            input=job.input,
            phase=job.phase(self.clock()),
            created_at=job.created_at,
            finished_at=job.finished_at,
            cost_usd=job.cost_usd,
            num_outputs=job.plan.num_outputs,
            error=job.failure,
            expired=self.is_gone(job),
        )

    # -- used by the server ------------------------------------------------------------------

    def take_fault(self, endpoint: str, request_id: str | None) -> Fault | None:
        """The first fault that applies to this request, counted as used; ``None`` if none does."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(endpoint, request_id):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return dataclasses.replace(fault)
            return None

    def plan(self, spec: ModelSpec, payload: dict[str, Any], image_urls: list[tuple[str, str]]) -> JobPlan:
        """Fix how a job of ``spec`` with this (valid) input will run, applying the first matching rule."""
        prompt = payload.get("prompt") if isinstance(payload.get("prompt"), str) else ""
        assert isinstance(prompt, str)
        with self._lock:
            rule = next((r for r in self._rules if r.matches(spec.model_id, prompt)), None)
            if rule is not None:
                rule.hits += 1
            config = self.config
        requested = payload.get("num_images") if isinstance(payload.get("num_images"), int) else None
        kind: OutputKind = spec.output_kind
        count = (rule.num_outputs if rule else None) or requested or 1
        if rule and rule.output_kind:
            kind = rule.output_kind  # type: ignore[assignment]  # checked against OUTPUT_KINDS in add_rule
        elif count > 1 and kind in ("image", "video"):
            kind = "images" if kind == "image" else "videos"
        if kind in ("image", "video"):
            count = 1
        if kind == "none":
            count = 0
        seed = payload.get("seed")
        return JobPlan(
            prompt=prompt,
            seed=seed if isinstance(seed, int) else None,
            image_urls=tuple(image_urls),
            aspect=parse_aspect_ratio(payload.get("aspect_ratio") or spec.default_aspect_ratio),
            output_kind=kind,
            num_outputs=count,
            output_bytes=rule.output_bytes if rule else None,
            fail_message=rule.fail_message if rule else None,
            queue_seconds=rule.queue_seconds
            if rule and rule.queue_seconds is not None
            else config.queue_seconds,
            run_seconds=rule.run_seconds if rule and rule.run_seconds is not None else config.run_seconds,
            long_side=config.image_long_side,
        )

    def submit(self, owner: str, model_id: str, payload: dict[str, Any], plan: JobPlan) -> Job:
        """Create a job, charging the balance; raises ``InsufficientBalance`` if it cannot pay."""
        with self._lock:
            config = self.config
            price = config.price_usd
            if config.balance_usd is not None:
                if config.balance_usd < price:
                    raise InsufficientBalance(
                        f"insufficient balance: ${config.balance_usd:.2f} left, a request costs ${price:.2f}"
                    )
                self.config = config.updated(balance_usd=round(config.balance_usd - price, 6))
            job = Job(
                request_id=uuid.uuid4().hex,
                model_id=model_id,
                owner=owner,
                input=payload,
                plan=plan,
                created_at=self.clock(),
                cost_usd=price,
            )
            self._jobs[job.request_id] = job
            return job

    def get(self, request_id: str) -> Job | None:
        """The job, unless unknown or gone (expired by TTL or ``expire``)."""
        with self._lock:
            job = self._jobs.get(request_id)
            return None if job is None or self.is_gone(job) else job

    def is_gone(self, job: Job) -> bool:
        """Whether the job's results expired (``expire()``, or ``request_ttl_seconds`` after it finished)."""
        if job.expired:
            return True
        ttl = self.config.request_ttl_seconds
        now = self.clock()
        return ttl is not None and now >= job.finished_at and now - job.finished_at >= ttl

    def queue_position(self, job: Job) -> int:
        """How many queued jobs are ahead of ``job`` (0: it is next)."""
        now = self.clock()
        with self._lock:
            ahead = 0
            for other in self._jobs.values():
                if other is job:
                    return ahead
                if other.phase(now) == "in_queue" and not self.is_gone(other):
                    ahead += 1
            return ahead

    def cancel(self, job: Job) -> bool:
        """Cancel ``job`` if still queued, refunding it; ``True`` if it is (now or already) cancelled."""
        with self._lock:
            phase = job.phase(self.clock())
            if phase == "in_queue":
                job.cancelled_at = self.clock()
                if self.config.balance_usd is not None:
                    self.config = self.config.updated(
                        balance_usd=round(self.config.balance_usd + job.cost_usd, 6)
                    )
                job.cost_usd = 0.0
            return job.cancelled_at is not None
