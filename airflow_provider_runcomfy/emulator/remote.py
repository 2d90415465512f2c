"""``RemoteEmulator``: the controls of an emulator running in another process, over its admin API.

Use it when the emulator was started with ``runcomfy-emulator`` (by CI, a
docker-compose file, or a test that runs it as a subprocess) and the test
still wants faults, rules and the journal. ``_AdminClient`` is the admin
API's side of ``ControlPlane``: the same models, as JSON.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from airflow_provider_runcomfy.emulator.admin import ADMIN_PREFIX, ADMIN_TOKEN_HEADER, PLAN_PATHS
from airflow_provider_runcomfy.emulator.config import DEFAULT_TOKEN
from airflow_provider_runcomfy.emulator.controls import EmulatorControls
from airflow_provider_runcomfy.emulator.faults import Fault, Rule
from airflow_provider_runcomfy.emulator.journal import Journal, JournalEntry
from airflow_provider_runcomfy.emulator.state import JobInfo, Planned

#: The environment variables the CLI reads too.
TOKEN_ENV = "RUNCOMFY_EMULATOR_TOKEN"
ADMIN_TOKEN_ENV = "RUNCOMFY_EMULATOR_ADMIN_TOKEN"


class _AdminClient:
    """``ControlPlane`` over HTTP: each call is one admin request; reads are snapshots."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # Every POST carries a JSON object (``{}`` at least): the admin API refuses any other body.
        if method == "POST" and body is None:
            body = {}
        response = self.http.request(method, path, json=body)
        if response.status_code in (400, 403):
            raise ValueError(
                f"the emulator refused {method} {ADMIN_PREFIX}{path}: {response.json()['detail']}"
            )
        response.raise_for_status()
        return response.json()

    @property
    def journal(self) -> Journal:
        return Journal([JournalEntry.from_dict(e) for e in self.call("GET", "/journal")])

    def add(self, item: Planned) -> Planned:
        return type(item).model_validate(
            self.call("POST", PLAN_PATHS[type(item)], item.model_dump(exclude_defaults=True))
        )

    def planned(self, kind: type[Planned]) -> list[Planned]:
        return [kind.model_validate(plan) for plan in self.call("GET", PLAN_PATHS[kind])]

    def clear(self, kind: type[Fault] | type[Rule]) -> None:
        self.call("DELETE", PLAN_PATHS[kind])

    def list_jobs(self) -> list[JobInfo]:
        return [JobInfo.from_dict(j) for j in self.call("GET", "/jobs")]

    def job(self, request_id: str) -> JobInfo | None:
        found = self.call("GET", f"/jobs/{request_id}")
        return JobInfo.from_dict(found) if found else None

    def expire(self, request_id: str) -> bool:
        return bool(self.call("POST", f"/jobs/{request_id}/expire")["expired"])

    def release(self, request_id: str | None) -> list[str]:
        body = {} if request_id is None else {"request_id": request_id}
        return list(self.call("POST", "/jobs/release", body)["released"])

    def get_config(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/config")
        return result

    def set_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("POST", "/config", changes)
        return result

    def reset(self) -> None:
        self.call("POST", "/reset")


class RemoteEmulator(EmulatorControls):
    """Controls of the emulator at ``base_url`` (e.g. ``http://127.0.0.1:8188``), through ``/_emulator/``.

    The admin API never reveals tokens, so pass the one the emulator was
    started with (default: ``RUNCOMFY_EMULATOR_TOKEN`` from the environment,
    else the built-in ``emulator-token``). Each property (``journal``,
    ``jobs``, ``faults``) makes one HTTP request and returns a snapshot.

    :param base_url: the emulator's base URL.
    :param token: the main user's API token, for ``token`` and ``airflow_conn_env``.
    :param admin_token: the emulator's admin token, if it was started with one
        (default: ``RUNCOMFY_EMULATOR_ADMIN_TOKEN`` from the environment).
    :param timeout: seconds to wait for each admin call.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        admin_token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = token or os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN
        admin_token = admin_token or os.environ.get(ADMIN_TOKEN_ENV)
        headers = {ADMIN_TOKEN_HEADER: admin_token} if admin_token else {}
        http = httpx.Client(
            base_url=self._base_url + ADMIN_PREFIX, headers=headers, timeout=timeout, trust_env=False
        )
        self._admin = _AdminClient(http)

    @property
    def _plane(self) -> _AdminClient:
        return self._admin

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._admin.http.close()

    def __repr__(self) -> str:
        return f"RemoteEmulator({self._base_url})"

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the emulator answers its health check (for one just started elsewhere)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._admin.call("GET", "/health")
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

    def set_config(self, **changes: Any) -> dict[str, Any]:
        if "token" in changes:
            self._token = changes["token"]
        return super().set_config(**changes)
