"""The emulator's memory: jobs, faults, rules, the journal and the config, behind one lock.

Nothing here knows HTTP. A job's state is computed from the clock each time
it is looked at (``in_queue`` until ``created_at + queue_seconds``, then
``in_progress`` for ``run_seconds``, then finished), so there is no
background task to drift, stall or leak. The lock exists because control
calls come from the test's thread while the server runs in another.

Every per-request operation is O(1) or O(log n) in the number of jobs
(a dict lookup, a queue-index prefix sum), so the emulator keeps up with
tens of thousands of jobs; only the snapshots tests ask for are O(n).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.faults import Fault, OutputKind, Rule
from airflow_provider_runcomfy.emulator.jobs import Job, JobInfo, JobPlan, Phase
from airflow_provider_runcomfy.emulator.journal import Journal, JournalEntry
from airflow_provider_runcomfy.emulator.models import ModelSpec, parse_aspect_ratio
from airflow_provider_runcomfy.emulator.queue import QueueIndex

__all__ = [
    "EmulatorState",
    "Fault",
    "InsufficientBalance",
    "Job",
    "JobInfo",
    "JobPlan",
    "Journal",
    "JournalEntry",
    "Phase",
    "Rule",
]

#: A fault or a rule: what the controls plan, each with an id and a count of hits.
Planned = TypeVar("Planned", Fault, Rule)


class InsufficientBalance(Exception):
    """A submit's estimated cost is more than the balance left (400002)."""


class EmulatorState:
    """All the emulator remembers, and the controls tests use to steer it.

    Its control methods (``add``, ``list_jobs``, ``set_config``, ...)
    take and return the declarative models; ``EmulatorControls`` gives them
    their friendly signatures, and the admin API serves the same methods.

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
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] = []
        self._queue = QueueIndex()
        self._faults: list[Fault] = []
        self._rules: list[Rule] = []
        self._planned: dict[type[Fault] | type[Rule], list[Any]] = {Fault: self._faults, Rule: self._rules}
        self._ids = itertools.count(1)

    # -- controls ---------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The settings, tokens left out."""
        return self.config.public_dict()

    def set_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change settings (validated; unknown names raise). Returns the new settings, tokens left out."""
        with self._lock:
            self.config = self.config.updated(**changes)
            return self.config.public_dict()

    def reset(self) -> None:
        """Forget jobs, faults, rules and the journal, and return to the starting config."""
        with self._lock:
            self._jobs.clear()
            self._order.clear()
            self._queue = QueueIndex()
            self._faults.clear()
            self._rules.clear()
            self.journal.clear()
            self.config = self._initial.model_copy(deep=True)

    def add(self, item: Planned) -> Planned:
        """Plan a ``Fault`` (see it for the kinds), or add a ``Rule`` after the others; returns it with its ``id``."""
        if isinstance(item, Fault) and item.times is not None and item.times < 1:
            raise ValueError("times must be at least 1, or None for every request")
        # Faults and rules share one id sequence; the caller gets a copy (the state keeps counting hits).
        with self._lock:
            added = item.model_copy(update={"id": next(self._ids), "hits": 0})
            self._planned[type(item)].append(added)
            return added.model_copy()

    def planned(self, kind: type[Planned]) -> list[Planned]:
        """Copies of the faults (used up ones too, with their ``hits``) or of the rules, in the order tried."""
        with self._lock:
            return [plan.model_copy() for plan in self._planned[kind]]

    def clear(self, kind: type[Fault] | type[Rule]) -> None:
        """Remove every fault, or every rule."""
        with self._lock:
            self._planned[kind].clear()

    def expire(self, request_id: str) -> bool:
        """Make a job answer 404001 from now on, as if its results had expired. ``False`` if unknown."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return False
            job.expired = True
            self._queue.remove(job.seq)
            return True

    def release(self, request_id: str | None = None) -> list[str]:
        """Let held jobs (one, or all) start running now; returns the ids of those released."""
        with self._lock:
            now = self.clock()
            if request_id is not None:
                job = self._jobs.get(request_id)
                held = [job] if job is not None else []
            else:
                held = self._order
            released = []
            for job in held:
                if job.plan.held and job.released_at is None and job.cancelled_at is None:
                    job.released_at = now
                    self._queue.remove(job.seq)
                    released.append(job.request_id)
            return released

    def list_jobs(self) -> list[JobInfo]:
        """A snapshot of every job, oldest first (expired ones included, marked ``expired``)."""
        with self._lock:
            return [self._info(job) for job in self._order]

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

    def take_fault(self, endpoint: str, request_id: str | None, *, not_written: bool = False) -> Fault | None:
        """The first fault that applies to this request, counted as used; ``None`` if none does.

        ``not_written`` faults are taken only when asked for (``not_written=True``): the result
        handler asks once it knows the job has finished, since they hit finished jobs only.
        """
        with self._lock:
            for fault in self._faults:
                if (fault.kind == "not_written") == not_written and fault.matches(endpoint, request_id):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault.model_copy()
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
            kind = rule.output_kind
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
            held=bool(rule and rule.hold),
        )

    def estimate(self, spec: ModelSpec, payload: dict[str, Any]) -> float:
        """What a job of ``spec`` with this input costs: its catalog price (or the config's) times units."""
        config = self.config
        if config.price_usd is not None:
            price = config.price_usd
        elif spec.base_price_usd is not None:
            price = spec.base_price_usd
        else:
            return config.unlisted_price_usd
        return round(price * spec.units(payload), 6)

    def submit(self, owner: str, model_id: str, payload: dict[str, Any], plan: JobPlan, price: float) -> Job:
        """Create a job, charging ``price`` to the balance; raises ``InsufficientBalance`` if it cannot pay."""
        with self._lock:
            config = self.config
            if config.balance_usd is not None:
                if config.balance_usd < price:
                    raise InsufficientBalance(
                        f"insufficient balance: ${config.balance_usd:.2f} left, "
                        f"this request costs ${price:.2f}"
                    )
                self.config = config.updated(balance_usd=round(config.balance_usd - price, 6))
            now = self.clock()
            if now < self._queue.now:
                self._rebuild_queue()
            job = Job(
                request_id=uuid.uuid4().hex,
                model_id=model_id,
                owner=owner,
                input=payload,
                plan=plan,
                created_at=now,
                cost_usd=price,
            )
            job.seq = self._queue.add(job.leaves_queue_at)
            self._jobs[job.request_id] = job
            self._order.append(job)
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
        """How many queued jobs are ahead of ``job`` (0: it is next); O(log n)."""
        now = self.clock()
        with self._lock:
            if now < self._queue.now:
                self._rebuild_queue()
            return self._queue.ahead(job.seq, now)

    def _rebuild_queue(self) -> None:
        """A new index, for a (fake) clock that went back: O(n), never with the real clock."""
        self._queue = QueueIndex()
        for job in self._order:
            leaves_at = job.leaves_queue_at
            gone = job.cancelled_at is not None or job.expired
            job.seq = self._queue.add(float("-inf") if gone else leaves_at)

    def cancel(self, job: Job) -> bool:
        """Cancel ``job`` if still queued, refunding it; ``True`` if it is (now or already) cancelled."""
        with self._lock:
            phase = job.phase(self.clock())
            if phase == "in_queue":
                job.cancelled_at = self.clock()
                self._queue.remove(job.seq)
                if self.config.balance_usd is not None:
                    self.config = self.config.updated(
                        balance_usd=round(self.config.balance_usd + job.cost_usd, 6)
                    )
                job.cost_usd = 0.0
            return job.cancelled_at is not None
