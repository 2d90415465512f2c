"""A deployment's make-up per topology: its components, their environment, command lines and logs.

``TopologyConfig`` is the part of ``AirflowDeployment`` that decides, from its settings
(``topology``, ``parallelism``, ``home`` ...), what runs and how: nothing here starts a
process or talks to one.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from deployment_base import LOOPBACK, free_port
from services import SERVICES, PostgresCluster, RedisServer

# ``[core] hostname_callable`` target.  Task instances record the hostname of the worker and
# the API server fetches the logs of running/deferred tasks from ``http://<hostname>:<port>``.
# The default (``getfqdn``) may resolve to a non-loopback address; this keeps every such
# request on 127.0.0.1 (and the serve-logs servers are not started at all, see ``_argv``).
HOSTNAME_MODULE = "runcomfy_system_test_hostname"
HOSTNAME_SOURCE = f'def loopback() -> str:\n    return "{LOOPBACK}"\n'


class TopologyConfig:
    """Components, environment and command lines of a deployment (see ``AirflowDeployment``)."""

    # Set by ``AirflowDeployment.__init__`` (settings) and ``start`` (port, services).
    topology: str
    triggerers: int
    celery_workers: int
    dags_folder: Path
    env_extra: dict[str, str]
    parallelism: int
    task_heartbeat_timeout: int
    home: Path
    port: int
    _postgres: PostgresCluster | None
    _redis: RedisServer | None

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

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

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

    def _write_hostname_module(self) -> None:
        (self.home / "pythonpath").mkdir(exist_ok=True)
        (self.home / "pythonpath" / f"{HOSTNAME_MODULE}.py").write_text(HOSTNAME_SOURCE)

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
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{HOSTNAME_MODULE}.loopback",
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
