"""Real Airflow for integration tests: a throwaway AIRFLOW_HOME, ``airflow dags test``, real HTTP.

One metadata DB (SQLite) is migrated per test session; each test runs a DAG
with ``airflow dags test`` in a subprocess -- the way a user checks a DAG --
against the emulator started by the ``runcomfy_emulator`` fixture, then
reads task states and XComs back from the DB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.forkserver import ForkServer, differs

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_runcomfy.emulator import RunComfyEmulator

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@dataclass
class DagRun:
    """What ``airflow dags test`` did: its output, and the DB to read states and XComs from."""

    dag_id: str
    returncode: int
    output: str
    db: Path

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql, args).fetchall()

    @property
    def run_id(self) -> str:
        rows = self._query(
            "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", self.dag_id
        )
        assert rows, f"no run of {self.dag_id} in the DB; output:\n{self.output[-3000:]}"
        return str(rows[0][0])

    @property
    def state(self) -> str:
        rows = self._query(
            "SELECT state FROM dag_run WHERE run_id = ? AND dag_id = ?", self.run_id, self.dag_id
        )
        return str(rows[0][0])

    def assert_states(self, **states: str) -> None:
        """The latest run's tasks (``task_id`` -> state) are exactly these; else the log's tail."""
        assert self.task_states() == states, self.output[-4000:]

    def task_states(self) -> dict[str, str]:
        """``task_id`` (``task_id[i]`` for mapped) -> state, for the latest run."""
        rows = self._query(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            self.dag_id,
            self.run_id,
        )
        return {(t if m < 0 else f"{t}[{m}]"): s for t, m, s in rows}

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        rows = self._query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ? AND map_index = ?",
            self.dag_id,
            self.run_id,
            task_id,
            key,
            map_index,
        )
        if not rows:
            return None
        value = rows[0][0]
        return json.loads(value) if isinstance(value, (str, bytes)) else value


class AirflowEnv:
    """A migrated AIRFLOW_HOME whose dags folder holds the examples and the test DAGs."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.dags.mkdir(parents=True)
        for folder in (REPO / "dags_examples", REPO / "tests" / "integration" / "dags"):
            for path in folder.glob("*.py"):
                shutil.copy(path, self.dags / path.name)
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        self.db = home / "airflow.db"
        self._files_by_dag: dict[str, set[Path]] | None = None
        self.forks: ForkServer | None = None

    def airflow(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``airflow *args``: forked from the fork server when one runs and ``env`` allows it."""
        full_env = {**self.env, **(env or {})}
        if self.forks is not None and not differs(full_env, self.env):
            return self.forks.run(list(args), full_env, timeout)
        return subprocess.run(
            [AIRFLOW, *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def file_of(self, dag_id: str) -> Path | None:
        """The one DAG file that names ``dag_id`` as a string literal, else None (parse the folder).

        ``airflow dags test`` given the file parses and syncs just that file instead of the
        whole folder of ~25 files (measured under cProfile on Airflow 3.3: finding the DAG took
        1.3 s instead of 4.4 s, of a ~35 s profiled run).
        """
        if self._files_by_dag is None:
            self._files_by_dag = {}
            texts = {path: path.read_text(encoding="utf-8") for path in sorted(self.dags.glob("*.py"))}
            for path, text in texts.items():
                for quoted in re.findall(r"""["']([A-Za-z0-9_.-]+)["']""", text):
                    self._files_by_dag.setdefault(quoted, set()).add(path)
        files = self._files_by_dag.get(dag_id, set())
        return next(iter(files)) if len(files) == 1 else None

    def dags_test(
        self,
        dag_id: str,
        *,
        conf: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> DagRun:
        args = ["dags", "test", dag_id]
        dag_file = self.file_of(dag_id)
        if dag_file is not None:
            args += ["--dagfile-path", str(dag_file)]
        if conf is not None:
            args += ["-c", json.dumps(conf)]
        proc = self.airflow(*args, env=env, timeout=timeout)
        return DagRun(dag_id, proc.returncode, proc.stdout + proc.stderr, self.db)


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    """The ``runcomfy_emulator`` fixture (fresh for each test) under the short name the tests use."""
    return runcomfy_emulator


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    """One migrated Airflow per session (SQLite), with the pool the batch example uses.

    Commands run as forks of one process that imported Airflow once (``forkserver``), unless
    ``RUNCOMFY_IT_FORK=0``.
    """
    env = AirflowEnv(tmp_path_factory.mktemp("airflow-home"))
    migrated = env.airflow("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    if os.environ.get("RUNCOMFY_IT_FORK", "1") != "0":
        env.forks = ForkServer(tmp_path_factory.mktemp("forkserver"), env.env)
    pool = env.airflow("pools", "set", "runcomfy", "4", "RunComfy concurrency", "--include-deferred")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    yield env
    if env.forks is not None:
        env.forks.stop()
