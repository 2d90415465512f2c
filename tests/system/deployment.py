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

Process ownership is strict.  Every component is started as the leader of a new session
(``start_new_session``), so its pid is both the process group id and the session id of
everything it forks.  Task processes leave the scheduler's process *group* (the task SDK
supervisor calls ``setpgid`` on the task child so it can ``killpg`` the task's own
subprocesses), so the group alone does not find them, and ``setproctitle`` overwrites the
memory that ``/proc/<pid>/environ`` shows, so an environment marker does not either.  The
*session* is kept by ``setpgid`` and inherited by every descendant: ``processes()`` is every
live process whose session is one of the components' (plus any descendant that called
``setsid``, found through its parent while that lives, and remembered).  ``stop()`` signals
exactly those and verifies that none is left.  Nothing else on the machine is ever signalled.
If the test process dies without calling ``stop()``, ``atexit`` (an uncaught exception) or
the kernel (``PR_SET_PDEATHSIG``: SIGKILL of the test process) sends the components SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psutil

# services.py sits next to this file; put the folder on the path whoever imports us
# (the system conftest does, the browser tests may import this file by path).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from services import SERVICES, PostgresCluster, RedisServer, check_python_packages

LOOPBACK = "127.0.0.1"

#: The components of the "local" topology (``AirflowDeployment.components`` for any topology).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TOPOLOGIES = ("local", "celery")

#: A new scheduler resets the task instances a dead one had queued or running once that one's
#: heartbeat is older than ``scheduler_health_check_threshold``, checking every
#: ``orphaned_tasks_check_interval`` (defaults: 30 s and 300 s; fast here, with a 2 s heartbeat).
FAST_ORPHAN_RESET = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
}


#: Health keys of ``/api/v2/monitor/health`` for each component that heartbeats.
_HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})

# ``[core] hostname_callable`` target.  Task instances record the hostname of the worker and
# the API server fetches the logs of running/deferred tasks from ``http://<hostname>:<port>``.
# The default (``getfqdn``) may resolve to a non-loopback address; this keeps every such
# request on 127.0.0.1 (and the serve-logs servers are not started at all, see ``_argv``).
_HOSTNAME_MODULE = "runcomfy_system_test_hostname"
_HOSTNAME_SOURCE = f'def loopback() -> str:\n    return "{LOOPBACK}"\n'


@dataclasses.dataclass(frozen=True)
class Workload:
    """One run of a task process in an executor slot (see ``AirflowDeployment.workloads``)."""

    ti_id: str
    start: float
    """Epoch seconds (the end minus the supervisor's measured duration)."""
    end: float
    final_state: str
    """The task instance's state when the process ended: ``deferred``, ``success``, ``failed`` ..."""
    exit_code: str

    @property
    def duration(self) -> float:
        return self.end - self.start


#: ``key=value`` fields of a console log line (values without spaces).
_LOG_FIELD = re.compile(r"(\w+)=(\S+)")


class DeploymentError(RuntimeError):
    """The deployment did not start, did not become healthy, or a wait timed out."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float, what: str, details: Callable[[], str]
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise ``DeploymentError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise DeploymentError(f"timed out after {timeout:.0f}s waiting for {what}\n{details()}")
        time.sleep(interval)


class AirflowDeployment:
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

    # ------------------------------------------------------------------ configuration

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_dir(self) -> Path:
        """Where each component's stdout/stderr goes (``<component>.log``)."""
        return self.home / "component-logs"

    @property
    def components(self) -> list[str]:
        """Every component of this topology, in start order (servers first)."""
        names = [*SERVICES] if self.topology == "celery" else []
        names += ["api-server", "scheduler", "dag-processor", *self.triggerer_names, *self.worker_names]
        return names

    @property
    def triggerer_names(self) -> list[str]:
        return ["triggerer", *(f"triggerer-{n}" for n in range(2, self.triggerers + 1))]

    @property
    def worker_names(self) -> list[str]:
        """The Celery workers (none with the LocalExecutor, whose workers are the scheduler's)."""
        return [f"celery-worker-{n}" for n in range(1, self.celery_workers + 1)]

    @property
    def running(self) -> bool:
        """Started, not stopped, and every component process alive."""
        return self._started and all(
            self.procs.get(c) and self.procs[c].poll() is None for c in self.components
        )

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def _environment(self) -> dict[str, str]:
        # Drop the caller's Airflow settings: a developer's AIRFLOW_HOME or AIRFLOW__* must not
        # leak into the deployment under test (the test process itself may set some).
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        pythonpath = [str(self.home / "pythonpath")]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        # Secrets are random per deployment but identical for all its components: the
        # scheduler signs each task's execution-API JWT that the API server verifies
        # (jwt_secret), the API server signs log tokens (secret_key), and the fernet key
        # encrypts connections and variables stored by one component and read by another.
        from cryptography.fernet import Fernet

        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.topology == "celery" else "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                # New DAGs are runnable as soon as they are parsed; no unpause round trip.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{_HOSTNAME_MODULE}.loopback",
                # SQLite in WAL mode (Airflow sets the pragma on every connection) holds up
                # with the four components and a few task processes, and needs no server.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                # REST calls need no login: SimpleAuthManager's all-admins mode makes every
                # request an admin (a middleware adds the token).  Fine on loopback only.
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": LOOPBACK,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                # 64 bytes or more: PyJWT warns on every token below that for HS512.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                # Task supervisors talk to the API server's execution API, never to the DB.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                # Not started (--skip-serve-logs), but keep the ports off Airflow's well-known
                # defaults so that two deployments (or a developer's Airflow) never collide.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                # Speed: the defaults are tuned for production, where a few seconds of latency
                # per hop do not matter.  Here every hop is waited on by a test.
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.task_heartbeat_timeout),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                # A task's supervisor notices that its task process exited only when its
                # select() wakes up, at the latest every min_heartbeat_interval (default 5 s):
                # observed in 3.3.2 as a task that finished its work 5 s before its executor
                # slot was freed.  1 s also means one heartbeat a second per running task.
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                # One parsing process is enough for a handful of DAG files and leaves the
                # second core to the scheduler and the tasks.  New files are found within 5 s.
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
                # A new triggerer takes over the triggers of a dead one only when the dead
                # one's last heartbeat is older than this threshold (default 30 s); 10 s with
                # a 2 s heartbeat keeps "kill -9 the triggerer, start it again" quick.
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            }
        )
        if self.topology == "celery":
            env.update(self._celery_environment())
        env.update(self.env_extra)
        return env

    def _celery_environment(self) -> dict[str, str]:
        assert self._postgres is not None and self._redis is not None
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self._postgres.url,
            # Each component keeps a pool; small ones keep 8 components under max_connections.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__CELERY__BROKER_URL": self._redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self._postgres.url}",
            # Together the workers have at least `parallelism` pool processes.
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(-(-self.parallelism // max(1, self.celery_workers))),
            # Airflow's defaults, spelled out because the scenarios depend on them: a message is
            # acknowledged when the task ends (a worker lost mid-task leaves it unacknowledged)
            # and a worker reserves one message per pool process.
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            # Redis redelivers a message unacknowledged for this long to another worker, even
            # while the first still runs it (Airflow then ignores the duplicate).  Set above the
            # longest task a worker runs; a scenario may lower it (env_extra).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            # The executor asks the result backend for task states with one process: 2 cores.
            "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
        }

    def _argv(self, component: str) -> list[str]:
        airflow = [sys.executable, "-m", "airflow"]
        if component == "api-server":
            return [*airflow, "api-server", "--host", LOOPBACK, "--port", str(self.port), "--workers", "1"]
        if component in ("scheduler", "triggerer"):
            # The serve-logs server binds every interface; the API server reads the local files.
            return [*airflow, component, "--skip-serve-logs"]
        if component.startswith("triggerer-"):
            # Another triggerer (HA): ``start_component("triggerer-2")``.
            return [*airflow, "triggerer", "--skip-serve-logs"]
        if component == "dag-processor":
            return [*airflow, "dag-processor"]
        if component.startswith("celery-worker-"):
            name = component.removeprefix("celery-")
            return [
                *airflow,
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@{LOOPBACK}",
                "--pid",
                str(self.home / f"{component}.pid"),  # the default file would be shared by both
                "--skip-serve-logs",
                # Gossip and mingle exchange state between workers at start: seconds of
                # start-up for nothing a test needs.
                "--without-gossip",
                "--without-mingle",
            ]
        if component == "postgres" and self._postgres is not None:
            return self._postgres.server_argv()
        if component == "redis" and self._redis is not None:
            return self._redis.argv()
        raise ValueError(f"unknown component {component!r}")

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
            (self.home / "pythonpath").mkdir(exist_ok=True)
            (self.home / "pythonpath" / f"{_HOSTNAME_MODULE}.py").write_text(_HOSTNAME_SOURCE)
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

    def start_component(self, component: str) -> subprocess.Popen[bytes]:
        """Start one component (again); its output is appended to ``log_path(component)``."""
        proc = self.procs.get(component)
        if proc is not None and proc.poll() is None:
            raise DeploymentError(f"{component} is already running (pid {proc.pid})")
        log = self.log_path(component)
        # PostgreSQL runs as an unprivileged user when we are root, with its own environment.
        where: dict[str, Any] = {"env": getattr(self, "_env", None), "cwd": self.home}
        if component == "postgres" and self._postgres is not None:
            where = self._postgres.popen_kwargs()
        with log.open("ab") as out:
            out.write(f"\n===== starting {component} at {time.strftime('%H:%M:%S')} =====\n".encode())
            out.flush()
            # start_new_session: own session and process group (sid == pgid == pid), so that
            # signals meant for this component reach its children and nothing else.
            proc = subprocess.Popen(
                self._argv(component),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
                **where,
            )
        self.procs[component] = proc
        self._popens.append(proc)
        self._sessions.add(proc.pid)
        return proc

    def kill_component(self, component: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to the component's process group and wait until the group is gone.

        The group is the component and the helpers it forked (the triggerer's TriggerRunner
        subprocess, the LocalExecutor's workers), not task processes (see module doc).
        """
        proc = self.procs.get(component)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The leader is reaped; wait for the rest of its group so that a replacement never
        # overlaps with a half-dead predecessor.
        deadline = time.monotonic() + timeout
        while any(_pgid(p.pid) == proc.pid for p in self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)

    def pause_component(self, component: str) -> None:
        """SIGSTOP the component's process group: a hung process (or a long GC pause, a VM stall).

        It keeps its sockets and its database rows but does nothing, heartbeats included,
        until ``resume_component``.  ``stop()`` resumes it before stopping it.
        """
        proc = self.procs[component]
        if proc.poll() is not None:
            raise DeploymentError(f"{component} is not running (exit code {proc.returncode})")
        os.killpg(proc.pid, signal.SIGSTOP)

    def resume_component(self, component: str) -> None:
        """SIGCONT the component's process group after ``pause_component``."""
        proc = self.procs[component]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)

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

        job_id = _wait_until(new_job, timeout, 0.3, f"{name} to heartbeat", self.diagnostics)
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

    def processes(self) -> list[psutil.Process]:
        """Every live process of this deployment: components, executor workers, task processes."""
        ours: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["status", "create_time"]):
            key = (proc.pid, proc.info["create_time"])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if key in self._seen or _sid(proc.pid) in self._sessions:
                ours[proc.pid] = proc
        # Descendants that started a session of their own (e.g. a subprocess started with
        # start_new_session) are still found through their parent.
        for proc in list(ours.values()):
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    ours.setdefault(child.pid, child)
        alive = []
        for proc in ours.values():
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    self._seen.add((proc.pid, proc.create_time()))
                    alive.append(proc)
        # A session with no process left and a reaped leader is over: its id is a free pid
        # again, which an unrelated process could get, so it must no longer count as ours.
        live_sessions = {_sid(p.pid) for p in alive}
        reaped = {p.pid for p in self._popens if p.returncode is not None}
        self._sessions -= (self._sessions & reaped) - live_sessions
        return alive

    def _wait_gone(self, procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
        """Wait until ``procs`` have exited; return those still alive after ``timeout``.

        A zombie counts as gone: orphans are reparented to PID 1, which in a container may
        never reap them (``psutil.wait_procs`` would wait for those until its timeout).
        """
        deadline = time.monotonic() + timeout
        while True:
            for proc in self._popens:
                proc.poll()  # reap our own children, the components
            alive = []
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(proc)
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.1)

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
        t0 = time.monotonic()
        leaders = {p.pid for p in self.procs.values() if p.poll() is None}
        # PostgreSQL and Redis go last: Airflow's components need them to stop.  (PostgreSQL's
        # children each start a session of their own: they are told apart by ancestry.)
        services = {self.procs[s].pid for s in SERVICES if s in self.procs and self.procs[s].poll() is None}
        service_pids = set(services)
        for pid in services:
            with contextlib.suppress(psutil.Error):
                service_pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))

        def airflow_processes() -> list[psutil.Process]:
            return [p for p in self.processes() if p.pid not in service_pids]

        tasks = [p for p in airflow_processes() if _pgid(p.pid) not in leaders]
        _signal_all(tasks, signal.SIGTERM)
        _signal_all(self._wait_gone(tasks, 2.0), signal.SIGKILL)
        self._wait_gone(tasks, 5.0)
        self.timings["stop_tasks"] = time.monotonic() - t0
        for pgid in leaders - services:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)  # a paused component cannot act on SIGTERM
                os.killpg(pgid, signal.SIGTERM)
        alive = self._wait_gone(airflow_processes(), min(3.0, self.stop_timeout))
        # A second SIGTERM is Airflow's own "don't wait" (the scheduler's "Signal again if
        # you don't want to wait", the triggerer's "Forcing exit due to second exit signal",
        # a Celery worker's cold shutdown): the triggerer otherwise waits 10 s for its
        # TriggerRunner after cancelling triggers.
        for pgid in (leaders - services) & {p.pid for p in alive}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        alive = self._wait_gone(airflow_processes(), max(0.0, self.stop_timeout - 3.0))
        if alive:
            print(
                f"stop(): SIGKILL after {self.stop_timeout:.0f}s: {[_cmdline(p) for p in alive]}",
                file=sys.stderr,
            )
        _signal_all(alive, signal.SIGKILL)
        self._wait_gone(alive, 5.0)
        if services:
            # PostgreSQL: SIGINT is its "fast" shutdown (SIGTERM waits for clients to leave).
            for name, sig in (("postgres", signal.SIGINT), ("redis", signal.SIGTERM)):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(sig)
            alive += self._wait_gone(self.processes(), 10.0)
        self.timings["stop_components"] = time.monotonic() - t0 - self.timings["stop_tasks"]
        for _ in range(3):  # a process may fork while its siblings are being killed
            leftovers = self.processes()
            _signal_all(leftovers, signal.SIGKILL)
            self._wait_gone(leftovers, 10.0)
        survivors = self.processes()
        self.timings["stop"] = time.monotonic() - t0
        if survivors:
            raise DeploymentError(f"processes survived stop(): {[(p.pid, _cmdline(p)) for p in survivors]}")
        self._started = False
        atexit.unregister(self.stop)
        if self._own_home and not os.environ.get("AIRFLOW_SYSTEM_KEEP_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)
            if self._postgres is not None:
                self._postgres.remove()

    # ------------------------------------------------------------------ health and diagnostics

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
                    if beat is None or _epoch(beat) <= heartbeat_after:
                        return None
            return health

        return _wait_until(healthy, timeout, 0.5, f"healthy {components}", self.diagnostics)

    def _worker_ready(self, name: str) -> bool:
        """Whether the current process of a Celery worker logged ``<name>@127.0.0.1 ready.``."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return False
        current = text.rsplit("===== starting", 1)[-1]
        return f"{name.removeprefix('celery-')}@{LOOPBACK} ready." in current

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.log_path(component)
        if not path.exists():
            return f"--- {component}: no log at {path}"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {component} ({path}), last {len(text)} lines:\n" + "\n".join(text)

    def diagnostics(self, lines: int = 40) -> str:
        """The tail of every component's log, for a failing test's output."""
        names = ["initdb", "db-migrate", *self.components]
        return "\n".join(self.log_tail(name, lines) for name in names if self.log_path(name).exists())

    # ------------------------------------------------------------------ DAGs, runs, tasks

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

        dag = _wait_until(
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
            state = self.dag_run(dag_id, run_id)["state"]
            return state if state in wanted else None

        return _wait_until(
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

        return _wait_until(
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

        return _wait_until(
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

    # ------------------------------------------------------------------ task processes

    def workloads(self) -> list[Workload]:
        """Every task workload an executor slot ran so far, from the supervisors' own account.

        Each LocalExecutor worker (forked from the scheduler, so it logs to ``scheduler.log``),
        or each Celery worker's pool process (``celery-worker-<n>.log``), runs one workload at
        a time under the task SDK supervisor, which logs
        ``Workload finished ... duration=<s> final_state=<state> workload_id=<ti id>`` when the
        task process is done.  A deferrable task has one workload per worker part: the part
        that submits and defers, and the part that resumes.  This is the executor slot's
        occupation as the worker measured it, not as inferred from task instance dates
        (which span the whole deferral).
        """
        lines = []
        for component in ("scheduler", *self.worker_names):
            with contextlib.suppress(OSError):
                lines += self.log_path(component).read_text(errors="replace").splitlines()
        found = []
        for line in lines:
            if "Workload finished" not in line:
                continue
            fields = dict(_LOG_FIELD.findall(line))
            try:
                end = _epoch(line.split(" ", 1)[0].replace("Z", "+00:00"))
                duration = float(fields["duration"])
            except (KeyError, ValueError):
                continue
            found.append(
                Workload(
                    ti_id=fields.get("workload_id", ""),
                    start=end - duration,
                    end=end,
                    final_state=fields.get("final_state", ""),
                    exit_code=fields.get("exit_code", ""),
                )
            )
        return sorted(found, key=lambda w: w.end)

    def task_pid(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> int:
        """The pid of the running task process (the child of the task's supervisor).

        The LocalExecutor runs each task in a worker process forked from the scheduler
        (process title ``airflow worker -- LocalExecutor: <ti id>``), the CeleryExecutor in a
        pool process of a Celery worker; that process is the task SDK *supervisor* and forks
        the task process proper, which runs the operator.  The
        task instance's ``pid`` (reported by the supervisor through the execution API) is the
        task process.  It is checked to belong to this deployment before it is returned.
        """
        ti = self.task_instance(dag_id, run_id, task_id, map_index)
        if ti["state"] != "running" or not ti.get("pid"):
            raise DeploymentError(
                f"{dag_id}/{run_id}/{task_id}[{map_index}] is {ti['state']}, pid {ti.get('pid')}"
            )
        pid = int(ti["pid"])
        if pid not in {p.pid for p in self.processes()}:
            raise DeploymentError(f"pid {pid} of {task_id} is not a process of this deployment")
        return pid

    def supervisor_pid(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> int:
        """The pid of the task's supervisor (the LocalExecutor worker that forked the task)."""
        parent = psutil.Process(self.task_pid(dag_id, run_id, task_id, map_index)).ppid()
        if parent not in {p.pid for p in self.processes()}:
            raise DeploymentError(f"parent {parent} of {task_id}'s process is not of this deployment")
        return parent

    def kill_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        sig: int = signal.SIGKILL,
        supervisor: bool = False,
    ) -> int:
        """Signal a running task's process (or its supervisor); return the pid signalled.

        Killing the task process is a crash of the operator: the supervisor sees it and
        reports the task failed (or up for retry) at once.  Killing the supervisor is a lost
        worker: the task stays ``running`` until the scheduler's heartbeat timeout
        (``task_heartbeat_timeout``) fails it.
        """
        if supervisor:
            pid = self.supervisor_pid(dag_id, run_id, task_id, map_index)
        else:
            pid = self.task_pid(dag_id, run_id, task_id, map_index)
        os.kill(pid, sig)
        return pid

    def worker_of(self, pid: int) -> str | None:
        """The Celery worker a (task) process belongs to, by session; None if no worker's."""
        sid = _sid(pid)
        for name in self.worker_names:
            proc = self.procs.get(name)
            if proc is not None and proc.pid == sid:
                return name
        return None

    def kill_worker(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """SIGKILL the worker running this task, with the task: a lost worker machine.

        CeleryExecutor: every process of the Celery worker that runs the task (its main
        process, pool processes, the task's supervisor and the task process): nothing is
        reported, the broker message stays unacknowledged.  Returns the worker's name; start
        it again with ``start_worker``.  LocalExecutor: the task's supervisor (the executor's
        worker process) and the task process; the scheduler lives on.  Returns ``"local"``.
        """
        pid = self.task_pid(dag_id, run_id, task_id, map_index)
        supervisor = self.supervisor_pid(dag_id, run_id, task_id, map_index)
        worker = self.worker_of(pid)
        if self.topology == "celery" and worker is None:
            raise DeploymentError(f"task process {pid} of {task_id} is in no Celery worker's session")
        if worker is None:
            victims = [psutil.Process(supervisor), psutil.Process(pid)]
        else:
            victims = [p for p in self.processes() if _sid(p.pid) == self.procs[worker].pid]
        _signal_all(victims, signal.SIGKILL)
        left = self._wait_gone(victims, 10.0)
        if left:
            raise DeploymentError(f"SIGKILL left {[_cmdline(p) for p in left]}")
        return worker or "local"

    def start_worker(self, name: str, timeout: float = 60.0) -> None:
        """Start a Celery worker (again) and wait until it is ready for tasks."""
        self.start_component(name)
        self.wait_healthy([name], timeout=timeout)


_PR_SET_PDEATHSIG = 1
try:  # looked up here, not in the forked child, where loading a library is not safe
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):
    _prctl = None


def _terminate_with_parent() -> None:
    """In the forked child, before exec: get SIGTERM when the process that started us dies.

    Backstop for a test process killed with SIGKILL (or by a CI timeout), which runs no
    teardown: its components then shut down instead of running on forever.  (Linux only; the
    "parent" is the thread that called Popen, so start deployments from a long-lived thread.)
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return "?"


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
