"""The deployment's REST API (``/api/v2``) as a test uses it: DAGs, runs, task instances, logs.

``AirflowRest`` is the part of ``AirflowDeployment`` that acts as a user does through the API
server (trigger a run, mark a task failed, read an XCom or a log) and waits for what the
components do in return.  Every call goes through ``api``, which a subclass may give a login
(the browser tests do).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
from deployment_base import TERMINAL_RUN_STATES, TERMINAL_TI_STATES, DeploymentError, wait_until
from deployment_config import TopologyConfig


class AirflowRest(TopologyConfig):
    """REST calls and waits on DAGs, runs and task instances (see ``AirflowDeployment``)."""

    _api: httpx.Client | None

    @property
    def api(self) -> httpx.Client:
        """An httpx client for ``/api/v2`` of this deployment (no login needed, see ``_environment``)."""
        if self._api is None:
            self._api = httpx.Client(base_url=f"{self.base_url}/api/v2", timeout=30.0)
        return self._api

    def health(self) -> dict[str, Any] | None:
        """``/api/v2/monitor/health``, or None while the API server does not answer."""
        try:
            response = self.api.get("/monitor/health", timeout=5.0)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def _ok(self, response: httpx.Response) -> Any:
        if response.is_error:
            raise DeploymentError(
                f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}"
            )
        return response.json() if response.content else None

    def import_errors(self) -> list[dict[str, Any]]:
        return self._ok(self.api.get("/importErrors"))["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id``; unpause it if it is paused."""

        def parsed() -> dict[str, Any] | None:
            response = self.api.get(f"/dags/{dag_id}")
            return self._ok(response) if response.status_code != 404 else None

        dag = wait_until(
            parsed,
            timeout,
            0.5,
            f"DAG {dag_id} to be parsed",
            lambda: f"import errors: {self.import_errors()}\n{self.log_tail('dag-processor')}",
        )
        if dag["is_paused"]:
            dag = self._ok(self.api.patch(f"/dags/{dag_id}", json={"is_paused": False}))
        return dag

    def trigger_dag(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """Trigger a manual run through REST, as a user does; return its run id."""
        self.wait_for_dag(dag_id)
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return self._ok(self.api.post(f"/dags/{dag_id}/dagRuns", json=body))["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._ok(self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 120.0, states: Iterable[str] = TERMINAL_RUN_STATES
    ) -> str:
        """Wait until the run reaches one of ``states`` (default: finished); return the state."""
        wanted = set(states)

        def done() -> str | None:
            try:
                state = self.dag_run(dag_id, run_id)["state"]
            except httpx.TimeoutException:  # an API server slow on a loaded machine: ask again
                return None
            return state if state in wanted else None

        return wait_until(
            done,
            timeout,
            0.5,
            f"run {dag_id}/{run_id} in {sorted(wanted)}",
            lambda: self._run_details(dag_id, run_id),
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self._ok(self.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances"))["task_instances"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        return self._ok(self.api.get(self._ti_path(dag_id, run_id, task_id, map_index)))

    @staticmethod
    def _ti_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        return path if map_index < 0 else f"{path}/{map_index}"

    def wait_for_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: str | Iterable[str],
        timeout: float = 120.0,
        map_index: int = -1,
    ) -> dict[str, Any]:
        """Wait until the task instance is in one of ``states``; return the task instance.

        Fails early when the task ends in a terminal state that was not asked for.
        """
        wanted = {states} if isinstance(states, str) else set(states)

        def reached() -> dict[str, Any] | None:
            response = self.api.get(self._ti_path(dag_id, run_id, task_id, map_index))
            if response.status_code == 404:  # not created yet (mapped, or run just created)
                return None
            ti = self._ok(response)
            if ti["state"] in wanted:
                return ti
            if ti["state"] in TERMINAL_TI_STATES:
                raise DeploymentError(
                    f"{dag_id}/{run_id}/{task_id}[{map_index}] ended {ti['state']}, wanted {sorted(wanted)}\n"
                    + self._run_details(dag_id, run_id)
                )
            return None

        return wait_until(
            reached,
            timeout,
            0.3,
            f"{dag_id}/{run_id}/{task_id}[{map_index}] in {sorted(wanted)}",
            lambda: self._run_details(dag_id, run_id),
        )

    def task_log_path(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> Path:
        """The worker part of a task's log on disk (Airflow's default ``log_filename_template``).

        The triggerer writes its part of the same try next to it, as
        ``<this path>.trigger.<triggerer job id>.log``.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        return folder / f"attempt={try_number}.log"

    def wait_for_trigger(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        timeout: float = 60.0,
        not_on_triggerer: int | None = None,
    ) -> dict[str, Any]:
        """Wait until the task is deferred and its trigger runs in a triggerer; return the trigger.

        "Runs" means a triggerer claimed it (``triggerer_id``) and logged ``trigger ... starting``
        in the task's trigger log, so that killing the triggerer now interrupts a live trigger.
        ``not_on_triggerer``: wait for another triggerer than this job id (a takeover).
        The returned dict is the task instance's ``trigger`` (``id``, ``classpath``, ``triggerer_id``).
        """

        def running() -> dict[str, Any] | None:
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            if ti["state"] in TERMINAL_TI_STATES:
                raise DeploymentError(f"{dag_id}/{run_id}/{task_id}[{map_index}] ended {ti['state']}")
            trigger = ti.get("trigger")
            if ti["state"] != "deferred" or not trigger or trigger.get("triggerer_id") is None:
                return None
            if trigger["triggerer_id"] == not_on_triggerer:
                return None
            worker_log = self.task_log_path(dag_id, run_id, task_id, ti["try_number"], map_index)
            trigger_log = worker_log.with_name(f"{worker_log.name}.trigger.{trigger['triggerer_id']}.log")
            with contextlib.suppress(OSError):
                if f"(ID {trigger['id']}) starting" in trigger_log.read_text(errors="replace"):
                    return trigger
            return None

        return wait_until(
            running,
            timeout,
            0.3,
            f"the trigger of {dag_id}/{run_id}/{task_id}[{map_index}] to run in a triggerer",
            lambda: self._run_details(dag_id, run_id),
        )

    def set_task_state(
        self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """Mark a task instance ``success``/``failed``/``skipped`` through REST, like the UI does."""
        response = self.api.patch(
            self._ti_path(dag_id, run_id, task_id, map_index), json={"new_state": state}
        )
        return self._ok(response)["task_instances"]

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """An XCom value as stored (JSON-decoded), e.g. the ``request_id`` a task pushed."""
        response = self.api.get(
            f"{self._ti_path(dag_id, run_id, task_id, -1)}/xcomEntries/{key}", params={"map_index": map_index}
        )
        value = self._ok(response)["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The task's log as the UI shows it (worker and triggerer parts), one line per record."""
        response = self.api.get(
            f"{self._ti_path(dag_id, run_id, task_id, -1)}/logs/{try_number}",
            params={"full_content": True, "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        lines = []
        for record in self._ok(response)["content"]:
            extra = {k: v for k, v in record.items() if k not in ("timestamp", "event", "level")}
            fields = " ".join(f"{k}={v}" for k, v in extra.items())
            lines.append(
                " ".join(
                    str(p)
                    for p in (record.get("timestamp"), record.get("level"), record.get("event"), fields)
                    if p
                )
            )
        return "\n".join(lines)

    def _run_details(self, dag_id: str, run_id: str) -> str:
        """A run's task states and the last component log lines: why a wait timed out."""
        try:
            tis = self.task_instances(dag_id, run_id)
            states = "\n".join(
                f"  {ti['task_id']}[{ti['map_index']}]: {ti['state']} (try {ti['try_number']})" for ti in tis
            )
        except (httpx.HTTPError, DeploymentError) as exc:
            states = f"  (could not list task instances: {exc})"
        return f"task instances of {dag_id}/{run_id}:\n{states}\n{self.diagnostics(20)}"
