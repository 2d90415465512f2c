"""A real Airflow 3.3 deployment on 127.0.0.1 for system tests.

``AirflowDeployment`` runs the API server, scheduler, DAG processor and triggerer as
separate OS processes in a throw-away ``AIRFLOW_HOME``, the way production runs them, so
that scenarios can exercise what ``airflow dags test`` cannot: deferral through a real
triggerer, executor slots, a triggerer crash and restart, a task process killed
mid-flight, a user marking a task failed in the UI (REST).

Two topologies (``topology=``):

- ``"local"``: LocalExecutor, SQLite, one triggerer -- a small single-machine deployment.
- ``"celery"``: CeleryExecutor with a Redis broker, PostgreSQL as metadata DB and Celery
  result backend, two Celery workers and two triggerers (HA) -- what users run once they
  outgrow one machine.  PostgreSQL and Redis are started by the deployment itself, on free
  loopback ports, as components like the others (``services.py``).

The class is assembled from one part per concern: ``deployment_config.py`` (components,
environment, command lines, logs), ``deployment_processes.py`` (process ownership: start,
signal and stop exactly our processes), ``deployment_rest.py`` (DAGs, runs and task
instances through REST) and ``deployment_tasks.py`` (task processes, executor workloads).
This module keeps the life cycle: start, health, triggerers and workers, stop.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

# The parts sit next to this file; put the folder on the path whoever imports us
# (the system conftest does, the browser tests and bench/ may import this file by path).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from deployment_base import (
    AIRFLOW_DEFAULT_INTERVALS,
    COMPONENTS,
    FAST_ORPHAN_RESET,
    LOOPBACK,
    TOPOLOGIES,
    DeploymentError,
    epoch,
    free_port,
    wait_until,
)
from deployment_tasks import TaskProcesses, Workload
from services import SERVICES, PostgresCluster, RedisServer, check_python_packages

__all__ = [
    "AIRFLOW_DEFAULT_INTERVALS",
    "COMPONENTS",
    "FAST_ORPHAN_RESET",
    "LOOPBACK",
    "TOPOLOGIES",
    "AirflowDeployment",
    "DeploymentError",
    "Workload",
    "free_port",
]

#: Health keys of ``/api/v2/monitor/health`` for each component that heartbeats.
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}


class AirflowDeployment(TaskProcesses):
    """Scheduler + triggerer(s) + DAG processor + API server (+ Celery workers) on 127.0.0.1.

    :param dags_folder: folder the DAG processor parses.
    :param env_extra: extra environment for every component (``AIRFLOW_CONN_*``,
        ``AIRFLOW__SECTION__KEY`` overrides); applied last, so it wins over the defaults here.
    :param parallelism: ``[core] parallelism``: executor slots, i.e. how many tasks run at once.
    :param home: ``AIRFLOW_HOME``; a new temporary folder (removed by ``stop()``) when omitted.
    :param task_heartbeat_timeout: seconds without a heartbeat before the scheduler fails a
        running task whose supervisor died (Airflow's default is 300 s).
    :param topology: ``"local"`` (LocalExecutor, SQLite) or ``"celery"`` (CeleryExecutor,
        Redis broker, PostgreSQL, ``celery_workers`` workers); see the module doc.
    :param triggerers: how many triggerers (default: 1 for "local", 2 for "celery").
    :param celery_workers: Celery workers of the "celery" topology; each runs enough pool
        processes that together they can run ``parallelism`` tasks.
    """

    def __init__(
        self,
        dags_folder: str | os.PathLike[str],
        env_extra: dict[str, str] | None = None,
        parallelism: int = 4,
        *,
        home: str | os.PathLike[str] | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 15.0,
        task_heartbeat_timeout: int = 30,
        topology: str = "local",
        triggerers: int | None = None,
        celery_workers: int = 2,
    ) -> None:
        if topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, not {topology!r}")
        self.topology = topology
        self.triggerers = triggerers if triggerers is not None else (2 if topology == "celery" else 1)
        self.celery_workers = celery_workers if topology == "celery" else 0
        #: Job id of the TriggererJob each triggerer component runs (``triggerer_of``).
        self.triggerer_jobs: dict[str, int] = {}
        self._postgres: PostgresCluster | None = None
        self._redis: RedisServer | None = None
        self.dags_folder = Path(dags_folder).resolve()
        self.env_extra = dict(env_extra or {})
        self.parallelism = parallelism
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.task_heartbeat_timeout = task_heartbeat_timeout
        self._own_home = home is None
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="airflow-system-"))
        #: Session ids of every component ever started (a killed triggerer's session
        #: id stays here: its stragglers, if any, are still ours to stop).
        self._sessions: set[int] = set()
        #: (pid, create_time) of every process seen as ours, to catch a process that left
        #: our sessions (``setsid``) after its parent died.
        self._seen: set[tuple[int, float]] = set()
        self.port = 0
        #: The current process of each component.
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Every component process ever started (a restarted triggerer has several).
        self._popens: list[subprocess.Popen[bytes]] = []
        self.timings: dict[str, float] = {}
        self._api: httpx.Client | None = None
        self._started = False

    @property
    def running(self) -> bool:
        """Started, not stopped, and every component process alive."""
        return self._started and all(
            self.procs.get(c) and self.procs[c].poll() is None for c in self.components
        )

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> AirflowDeployment:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Migrate a fresh DB, start the four components and wait until all are healthy."""
        if self._started:
            return
        self._started = True
        # A test process that dies of an exception, or a script that forgets stop(), must not
        # leave a deployment behind (see also _terminate_with_parent).
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self.port = free_port()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._write_hostname_module()
            if self.topology == "celery":
                self._start_services()
                self.timings["services"] = time.monotonic() - t0
            self._env = self._environment()
            self._migrate()
            self.timings["migrate"] = time.monotonic() - t0
            for component in self.components:
                if component not in SERVICES and component not in self.triggerer_names:
                    self.start_component(component)
            # One triggerer after the other, so that each one's job id is known (triggerer_of).
            for name in self.triggerer_names:
                self.start_triggerer(name, wait_healthy=False, timeout=self.start_timeout)
            self.wait_healthy(timeout=self.start_timeout)
            self.timings["start"] = time.monotonic() - t0
        except BaseException:
            print(self.diagnostics(), file=sys.stderr)
            self.stop()
            raise

    def _start_services(self) -> None:
        """PostgreSQL (a new cluster) and Redis, each on a free loopback port."""
        check_python_packages()
        self._postgres = PostgresCluster(free_port())
        self._postgres.initdb(self.log_path("initdb"))
        postgres = self.start_component("postgres")
        self._redis = RedisServer(free_port(), self.home / "redis")
        redis_server = self.start_component("redis")
        self._postgres.wait_ready(lambda: postgres.poll() is None, timeout=self.start_timeout)
        self._redis.wait_ready(lambda: redis_server.poll() is None, timeout=self.start_timeout)

    def _migrate(self) -> None:
        log = self.log_path("db-migrate")
        with log.open("ab") as out:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                env=self._env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=self.start_timeout,
                check=False,
            )
        if result.returncode != 0:
            raise DeploymentError(f"airflow db migrate failed:\n{self.log_tail('db-migrate')}")

    # ------------------------------------------------------------------ triggerers and workers

    def kill_triggerer(self, name: str = "triggerer") -> None:
        """SIGKILL a triggerer and its TriggerRunner subprocess: a crash, no cleanup runs."""
        self.kill_component(name, signal.SIGKILL)

    def start_triggerer(
        self, name: str = "triggerer", wait_healthy: bool = True, timeout: float = 60.0
    ) -> int:
        """Start a (new) triggerer; wait until its job heartbeats; return its job id.

        ``wait_healthy``: with a single triggerer, also wait until the health endpoint sees
        its heartbeat (with several, the endpoint reports the newest of them).
        """
        started = time.time()
        known = set(self.triggerer_jobs.values())
        self.start_component(name)

        def new_job() -> int | None:
            if self.procs[name].poll() is not None:
                raise DeploymentError(f"{name} exited ({self.procs[name].returncode})\n{self.log_tail(name)}")
            try:
                response = self.api.get("/jobs", params={"job_type": "TriggererJob", "is_alive": True})
            except httpx.TransportError:
                return None
            if response.status_code != 200:
                return None
            ids = [job["id"] for job in response.json()["jobs"] if job["id"] not in known]
            ids = [i for i in ids if i > max(known, default=0)]
            return min(ids) if ids else None

        job_id = wait_until(new_job, timeout, 0.3, f"{name} to heartbeat", self.diagnostics)
        self.triggerer_jobs[name] = job_id
        if wait_healthy and self.triggerers == 1:
            self.wait_healthy(["triggerer"], timeout=timeout, heartbeat_after=started)
        return job_id

    def restart_triggerer(self, name: str = "triggerer") -> None:
        self.kill_triggerer(name)
        self.start_triggerer(name)

    def triggerer_of(self, job_id: int) -> str:
        """The triggerer component running TriggererJob ``job_id`` (a trigger's ``triggerer_id``)."""
        for name, known in self.triggerer_jobs.items():
            if known == job_id:
                return name
        raise DeploymentError(f"no triggerer of this deployment runs job {job_id}: {self.triggerer_jobs}")

    def start_worker(self, name: str, timeout: float = 60.0) -> None:
        """Start a Celery worker (again) and wait until it is ready for tasks."""
        self.start_component(name)
        self.wait_healthy([name], timeout=timeout)

    def stop(self) -> None:
        """Stop exactly what this deployment started; raise if any of its processes survives.

        1. The task processes (the ones outside the components' process groups) go first,
           while the API server is still up, so that their supervisors can report the end of
           the task through it and exit (with the API server gone they retry for minutes).
           SIGTERM only runs the operator's ``on_kill()`` in Airflow 3.3.2: the task goes on
           running, so SIGKILL follows after a short grace.
        2. SIGTERM to every component's process group, again after 3 s to the ones still there.
        3. SIGKILL to whatever of the deployment is left after ``stop_timeout``.
        """
        if self._api is not None:
            self._api.close()
            self._api = None
        self._stop_processes()
        self._started = False
        atexit.unregister(self.stop)
        if self._own_home and not os.environ.get("AIRFLOW_SYSTEM_KEEP_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)
            if self._postgres is not None:
                self._postgres.remove()

    # ------------------------------------------------------------------ health

    def wait_healthy(
        self,
        components: Iterable[str] | None = None,
        timeout: float = 120.0,
        heartbeat_after: float | None = None,
    ) -> dict[str, Any]:
        """Wait until the API server answers and the given components report healthy heartbeats.

        A Celery worker is healthy once it logged that it is ready (it has no heartbeat in
        ``/monitor/health``).  Default: every component of the topology.

        :param heartbeat_after: epoch seconds; the heartbeat must be newer (a restarted
            component is not "healthy" on the strength of its dead predecessor's heartbeat).
        """
        components = list(self.components if components is None else components)

        def healthy() -> dict[str, Any] | None:
            for name in components:
                proc = self.procs.get(name)
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise DeploymentError(f"{name} is not running (exit code {code})\n{self.log_tail(name)}")
            health = self.health()
            if health is None or health["metadatabase"]["status"] != "healthy":
                return None
            for name in components:
                if name in self.worker_names and not self._worker_ready(name):
                    return None
                key = _HEALTH_KEYS.get(name)
                if key is None:
                    continue
                info = health.get(key) or {}
                if info.get("status") != "healthy":
                    return None
                if heartbeat_after is not None:
                    beat = info.get(f"latest_{key}_heartbeat")
                    if beat is None or epoch(beat) <= heartbeat_after:
                        return None
            return health

        return wait_until(healthy, timeout, 0.5, f"healthy {components}", self.diagnostics)

    def _worker_ready(self, name: str) -> bool:
        """Whether the current process of a Celery worker logged ``<name>@127.0.0.1 ready.``."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return False
        current = text.rsplit("===== starting", 1)[-1]
        return f"{name.removeprefix('celery-')}@{LOOPBACK} ready." in current
