"""The controls a test has over an emulator, the same for one in this process and one elsewhere.

``RunComfyEmulator`` (a server in a background thread) implements them on
its memory directly; ``RemoteEmulator`` implements them over the admin API
(``/_emulator/...``). A test written against ``EmulatorControls`` runs
against either.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from airflow_provider_runcomfy.emulator.state import Fault, JobInfo, Journal, Rule


class EmulatorControls(ABC):
    """Steer and observe an emulator: faults, rules, config, expiry, jobs and the journal."""

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The emulator's base URL, e.g. ``http://127.0.0.1:8188`` (what a connection's host is set to)."""

    @property
    @abstractmethod
    def token(self) -> str:
        """The main user's API token."""

    @property
    @abstractmethod
    def journal(self) -> Journal:
        """The API and file requests received so far (``journal.of("submit")``, ``journal.count(...)``)."""

    @property
    @abstractmethod
    def jobs(self) -> list[JobInfo]:
        """A snapshot of every job, oldest first."""

    @abstractmethod
    def job(self, request_id: str) -> JobInfo | None:
        """A snapshot of one job, or ``None`` if the emulator never saw it."""

    @abstractmethod
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
        """Make the next ``times`` requests to ``endpoint`` misbehave; see ``EmulatorState.add_fault``.

        ``endpoint``: ``submit``, ``status``, ``result``, ``cancel``, ``model``,
        ``file`` or ``any``. ``kind``: ``http``, ``error_200``, ``delay``,
        ``drop`` or ``truncate``.
        """

    @property
    @abstractmethod
    def faults(self) -> list[Fault]:
        """The faults added since the last reset, with how often each hit (``hits``) and may still hit."""

    @abstractmethod
    def clear_faults(self) -> None:
        """Remove every fault."""

    @abstractmethod
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
        """Decide how jobs submitted from now on run; first match wins (see ``EmulatorState.add_rule``)."""

    @property
    @abstractmethod
    def rules(self) -> list[Rule]:
        """The rules, in the order they are tried."""

    @abstractmethod
    def clear_rules(self) -> None:
        """Remove every rule."""

    @abstractmethod
    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change settings (names of ``EmulatorConfig``); returns the settings, tokens left out."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The current settings, tokens left out."""

    @abstractmethod
    def reset(self) -> None:
        """Forget jobs, faults, rules and the journal; return to the settings the emulator started with."""

    @abstractmethod
    def expire(self, request_id: str) -> bool:
        """Make a job answer 404001 from now on, as if its results had expired; ``False`` if unknown."""

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
