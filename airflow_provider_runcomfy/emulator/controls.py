"""The controls a test has over an emulator, the same for one in this process and one elsewhere.

The public methods are written once, here. Each builds the declarative
model (``Fault``, ``Rule``, a config change) and hands it to a
``ControlPlane``: the emulator's own ``EmulatorState`` for
``RunComfyEmulator`` (a server in a background thread), or the admin API
client for ``RemoteEmulator``. A test written against ``EmulatorControls``
runs against either.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, Protocol, Self

from airflow_provider_runcomfy.emulator.faults import Fault, Rule, fault_from
from airflow_provider_runcomfy.emulator.journal import Journal
from airflow_provider_runcomfy.emulator.state import JobInfo, Planned


class ControlPlane(Protocol):
    """What the controls need from an emulator: ``EmulatorState`` in-process, the admin API remotely."""

    @property
    def journal(self) -> Journal: ...
    def add(self, item: Planned) -> Planned: ...
    def planned(self, kind: type[Planned]) -> list[Planned]: ...
    def clear(self, kind: type[Fault] | type[Rule]) -> None: ...
    def list_jobs(self) -> list[JobInfo]: ...
    def job(self, request_id: str) -> JobInfo | None: ...
    def expire(self, request_id: str) -> bool: ...
    def release(self, request_id: str | None) -> list[str]: ...
    def get_config(self) -> dict[str, Any]: ...
    def set_config(self, changes: dict[str, Any]) -> dict[str, Any]: ...
    def reset(self) -> None: ...


class EmulatorControls(ABC):
    """Steer and observe an emulator: faults, rules, config, expiry, jobs and the journal."""

    @property
    @abstractmethod
    def _plane(self) -> ControlPlane:
        """Where the controls act."""

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The emulator's base URL, e.g. ``http://127.0.0.1:8188`` (what a connection's host is set to)."""

    @property
    @abstractmethod
    def token(self) -> str:
        """The main user's API token."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the emulator: stop it (``RunComfyEmulator``) or close the connections to it."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def journal(self) -> Journal:
        """The API and file requests received so far (``journal.of("submit")``, ``journal.count(...)``)."""
        return self._plane.journal

    @property
    def jobs(self) -> list[JobInfo]:
        """A snapshot of every job, oldest first."""
        return self._plane.list_jobs()

    def job(self, request_id: str) -> JobInfo | None:
        """A snapshot of one job, or ``None`` if the emulator never saw it."""
        return self._plane.job(request_id)

    def peak_in_flight(self, model_id: str | None = None) -> int:
        """The most jobs (of ``model_id``, or all) the emulator held at once, queued or running.

        What RunComfy would have held for a batch: a job counts from its submit until it
        finished or was cancelled (not until the client read its result).
        """
        events = sorted(
            (t, step)
            for job in self.jobs
            if model_id is None or job.model_id == model_id
            for t, step in ((job.created_at, 1), (job.finished_at, -1))
        )  # at equal times the -1 sorts first: a job that ends as another starts is not overlap
        peak = held = 0
        for _, step in events:
            held += step
            peak = max(peak, held)
        return peak

    def add_fault(
        self, endpoint: str, kind: str, times: int | None = 1, request_id: str | None = None, **options: Any
    ) -> Fault:
        """Make the next ``times`` requests to ``endpoint`` misbehave (``times=None``: until cleared).

        ``endpoint``: ``submit``, ``status``, ``result``, ``cancel``, ``model``,
        ``file``, ``sample`` or ``any``. ``kind`` and ``options`` are the fields
        of ``Fault``, which lists what each kind answers: ``http`` (``status``,
        ``error_code``, ``error_message``, ``retry_after``, ``headers``),
        ``error_200``, ``delay`` (``seconds``), ``drop``, ``truncate``
        (``after_bytes``), ``bad_body`` (``status``, ``content_type``, ``body``),
        ``not_written``, ``gzip_bomb``/``zlib_bomb``/``png_bomb`` (``size``) and
        ``redirect`` (``location``). ``request_id`` limits it to one job.
        Raises ``ValueError`` (a pydantic ``ValidationError``) for an impossible fault.
        """
        return self._plane.add(fault_from(endpoint, kind, times, request_id, **options))

    @property
    def faults(self) -> list[Fault]:
        """The faults added since the last reset, with how often each hit (``hits``) and may still hit."""
        return self._plane.planned(Fault)

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._plane.clear(Fault)

    def add_rule(
        self, prompt_contains: str | None = None, model_id: str | None = None, **options: Any
    ) -> Rule:
        """Decide how jobs submitted from now on run; first match wins. ``options``: the fields of ``Rule``.

        ``queue_seconds``, ``run_seconds``, ``fail_message``, ``num_outputs``,
        ``output_bytes``, ``output_kind``, ``hold`` (queued until ``release()``).
        """
        rule = Rule.model_validate({"prompt_contains": prompt_contains, "model_id": model_id, **options})
        return self._plane.add(rule)

    @property
    def rules(self) -> list[Rule]:
        """The rules, in the order they are tried."""
        return self._plane.planned(Rule)

    def clear_rules(self) -> None:
        """Remove every rule."""
        self._plane.clear(Rule)

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change settings (names of ``EmulatorConfig``); returns the settings, tokens left out."""
        return self._plane.set_config(changes)

    def get_config(self) -> dict[str, Any]:
        """The current settings, tokens left out."""
        return self._plane.get_config()

    def reset(self) -> None:
        """Forget jobs, faults, rules and the journal; return to the settings the emulator started with."""
        self._plane.reset()

    def expire(self, request_id: str) -> bool:
        """Make a job answer 404001 from now on, as if its results had expired; ``False`` if unknown."""
        return self._plane.expire(request_id)

    def release(self, request_id: str | None = None) -> list[str]:
        """Let jobs held in the queue by a ``hold`` rule (one, or all) start running now; their ids."""
        return self._plane.release(request_id)

    def url(self, path: str) -> str:
        """An absolute URL on the emulator, e.g. ``url("/samples/portrait.png")``."""
        return self.base_url + "/" + path.lstrip("/")

    def sample_url(self, name: str = "portrait") -> str:
        """The URL of a sample input picture: ``portrait``, ``street``, ``product`` or ``landscape``."""
        return self.url(f"/samples/{name}.png")

    def airflow_conn_env(self, conn_id: str = "runcomfy_default") -> dict[str, str]:
        """The environment variable that makes Airflow's connection ``conn_id`` point at this emulator.

        Put it into ``os.environ`` (or a subprocess's ``env``) before running
        ``airflow dags test`` or ``dag.test()``: Airflow reads connections
        from ``AIRFLOW_CONN_<CONN_ID>`` for sync and async lookups alike.
        """
        conn = {"conn_type": "runcomfy", "host": self.base_url, "password": self.token}
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}
