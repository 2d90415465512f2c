"""PostgreSQL and Redis servers for the Celery topology of the system tests.

Both run in the foreground as components of an ``AirflowDeployment`` (started with
``start_component``, so they are in its sessions and stopped, by pid, with the rest), on a
free loopback port, with their data in a temporary folder that ``stop()`` removes.

PostgreSQL refuses to run as root (``initdb`` and ``postgres`` both check the effective uid),
which is how CI runs: as root, the cluster is created and run as an unprivileged user
(``postgres`` if the distro package created it, else ``nobody``) through ``subprocess``'s own
``user=``/``group=`` (setuid in the forked child: no ``su``/``runuser`` process in between,
nothing that starts a session of its own).  As a normal user, it runs as that user.
``postgres`` is started directly, not through ``pg_ctl``, which detaches the server into a
session of its own (``setsid``) where the deployment's process ownership would lose it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
#: Backing servers of the "celery" topology (component names): started first, stopped last.
SERVICES = ("postgres", "redis")
#: The database, and the superuser ``initdb`` creates (trust authentication, loopback only).
PG_USER = PG_DATABASE = "airflow"


class ServiceError(RuntimeError):
    """A server could not be set up or did not start."""


def postgres_bin() -> Path:
    """The folder of ``initdb``/``postgres``: ``$PG_BIN``, the newest distro version, or ``PATH``."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise ServiceError("PostgreSQL is not installed (no initdb): run scripts/system-packages")


def redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ServiceError("redis-server is not installed: run scripts/system-packages")
    return found


def check_python_packages() -> None:
    """Fail with what to install when the Celery topology cannot start in this environment."""
    import importlib.util

    problems = []
    if importlib.util.find_spec("asyncpg") is None:
        problems.append("asyncpg (Airflow's async metadata engine for PostgreSQL)")
    try:
        # apache-airflow-providers-celery 3.26 imports it; celery 5.7 removed it.
        from celery.backends.database import retry  # noqa: F401
    except ImportError:
        problems.append("celery<5.7 (apache-airflow-providers-celery cannot load with celery 5.7)")
    if problems:
        raise ServiceError(
            "the Celery topology needs "
            + "; ".join(problems)
            + ": run scripts/bootstrap (requirements/constraints.txt)"
        )


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServiceError("running as root, and neither a 'postgres' nor a 'nobody' user exists for PostgreSQL")


class PostgresCluster:
    """A throw-away PostgreSQL cluster: ``initdb`` here, the server is a deployment component."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.user = unprivileged_user()
        # Not under AIRFLOW_HOME: that folder is private to us (0700), and the server may run
        # as another user, who needs to reach its data folder.
        self.root = Path(tempfile.mkdtemp(prefix="airflow-system-pg-"))
        self.data = self.root / "data"
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{PG_USER}@{LOOPBACK}:{self.port}/{PG_DATABASE}"

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that run a PostgreSQL program as ``self.user``."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        kwargs: dict[str, Any] = {"env": env, "cwd": self.root}
        if self.user is not None:
            env["HOME"] = str(self.root)
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return kwargs

    def initdb(self, log: Path, timeout: float = 120.0) -> None:
        argv = [
            str(postgres_bin() / "initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            "--auth=trust",  # loopback only, a throw-away cluster
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        with log.open("ab") as out:
            result = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                **self.popen_kwargs(),
            )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed (exit {result.returncode}), see {log}")

    def server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": "",  # TCP on loopback only
            # A test database: durability buys nothing and costs the shared disk.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # Airflow's components and the Celery result backend each keep a pool.
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        argv = [str(postgres_bin() / "postgres"), "-D", str(self.data)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def wait_ready(self, alive: Any, timeout: float = 60.0) -> None:
        """Wait until the server accepts connections, then create the Airflow database."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            if not alive():
                raise ServiceError("postgres exited during start-up")
            try:
                conn = psycopg2.connect(
                    host=LOOPBACK, port=self.port, user=PG_USER, dbname="postgres", connect_timeout=2
                )
                break
            except psycopg2.OperationalError:
                if time.monotonic() >= deadline:
                    raise ServiceError(f"postgres did not accept connections within {timeout:.0f}s") from None
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {PG_DATABASE}")
        finally:
            conn.close()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A Redis server for the Celery broker: no persistence, loopback only."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def argv(self) -> list[str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return [
            redis_server(),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.folder),
        ]

    def wait_ready(self, alive: Any, timeout: float = 30.0) -> None:
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_connect_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not alive():
                    raise ServiceError("redis-server exited during start-up")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() >= deadline:
                    raise ServiceError(f"redis-server did not answer within {timeout:.0f}s")
                time.sleep(0.2)
        finally:
            client.close()
