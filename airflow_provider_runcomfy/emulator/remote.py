"""``RemoteEmulator``: the controls of an emulator running in another process, over its admin API.

Use it when the emulator was started with ``runcomfy-emulator`` (by CI, a
docker-compose file, or a test that runs it as a subprocess) and the test
still wants faults, rules and the journal.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any, Self

import httpx

from airflow_provider_runcomfy.emulator.config import DEFAULT_TOKEN
from airflow_provider_runcomfy.emulator.controls import EmulatorControls
from airflow_provider_runcomfy.emulator.state import Fault, JobInfo, Journal, JournalEntry, Rule


class RemoteEmulator(EmulatorControls):
    """Controls of the emulator at ``base_url`` (e.g. ``http://127.0.0.1:8188``), through ``/_emulator/``.

    The admin API never reveals tokens, so pass the one the emulator was
    started with (default: ``RUNCOMFY_EMULATOR_TOKEN`` from the environment,
    else the built-in ``emulator-token``). Each property (``journal``,
    ``jobs``, ``faults``) makes one HTTP request and returns a snapshot.

    :param base_url: the emulator's base URL.
    :param token: the main user's API token, for ``token`` and ``airflow_conn_env``.
    :param timeout: seconds to wait for each admin call.
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 10.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = token or os.environ.get("RUNCOMFY_EMULATOR_TOKEN") or DEFAULT_TOKEN
        self._http = httpx.Client(base_url=self._base_url + "/_emulator", timeout=timeout, trust_env=False)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code == 400:
            raise ValueError(f"the emulator refused {method} /_emulator{path}: {response.json()['detail']}")
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteEmulator({self._base_url})"

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the emulator answers its health check (for one just started elsewhere)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/health")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def token(self) -> str:
        return self._token

    @property
    def journal(self) -> Journal:
        return Journal([JournalEntry.from_dict(e) for e in self._call("GET", "/journal")])

    @property
    def jobs(self) -> list[JobInfo]:
        return [JobInfo.from_dict(j) for j in self._call("GET", "/jobs")]

    def job(self, request_id: str) -> JobInfo | None:
        found = self._call("GET", f"/jobs/{request_id}")
        return JobInfo.from_dict(found) if found else None

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
        body = {
            "endpoint": endpoint,
            "kind": kind,
            "times": times,
            "request_id": request_id,
            "status": status,
            "error_code": error_code,
            "error_message": error_message,
            "retry_after": retry_after,
            "seconds": seconds,
            "after_bytes": after_bytes,
        }
        return Fault.from_dict(self._call("POST", "/faults", body))

    @property
    def faults(self) -> list[Fault]:
        return [Fault.from_dict(f) for f in self._call("GET", "/faults")]

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

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
        body = {
            "prompt_contains": prompt_contains,
            "model_id": model_id,
            "queue_seconds": queue_seconds,
            "run_seconds": run_seconds,
            "fail_message": fail_message,
            "num_outputs": num_outputs,
            "output_bytes": output_bytes,
            "output_kind": output_kind,
        }
        return Rule.from_dict(self._call("POST", "/rules", body))

    @property
    def rules(self) -> list[Rule]:
        return [Rule.from_dict(r) for r in self._call("GET", "/rules")]

    def clear_rules(self) -> None:
        self._call("DELETE", "/rules")

    def set_config(self, **changes: Any) -> dict[str, Any]:
        if "token" in changes:
            self._token = changes["token"]
        result: dict[str, Any] = self._call("POST", "/config", changes)
        return result

    def get_config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/config")
        return result

    def reset(self) -> None:
        self._call("POST", "/reset")

    def expire(self, request_id: str) -> bool:
        return bool(self._call("POST", f"/jobs/{request_id}/expire")["expired"])
