"""Runs ``airflow`` CLI commands as forks of one process that imported Airflow once.

Why: each integration test runs ``airflow dags test`` (and a few other commands) in a fresh
process, and ~2.3 CPU-s of each went to importing Airflow, its CLI, the task runner and the
execution API -- the same work ~300 times per CI run. This server imports those once, then
forks a child per command; the child sets the command's environment, working folder and
output files and calls ``airflow.__main__.main()``, the function the ``airflow`` script calls.
So the command, the DAG parsing, the task and its HTTP to the emulator are Airflow's own, as
in a fresh process; only the imports are shared.

What could differ from a fresh process is state Airflow computes at import from its
configuration (logging level, the metadata DB, ...). A command whose ``AIRFLOW_*`` variables
or Python settings differ from the server's is therefore never forked: ``AirflowEnv`` runs it
as a plain subprocess (``differs``). ``RUNCOMFY_IT_FORK=0`` runs every command that way.

Protocol: one Unix-socket connection per command; the client sends one JSON line
(``args``, ``env``, ``cwd``, ``stdout``, ``stderr``: the two output files); the server answers
``{"pid": ...}`` when the child started and ``{"returncode": ...}`` when it ended.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

#: Imported once before any fork: what every ``airflow dags test`` imports (each best-effort, as
#: module paths differ between Airflow releases; a missing one is imported by the child).
PRELOAD = (
    "airflow.__main__",
    "airflow.cli.cli_parser",
    "airflow.cli.commands.dag_command",
    "airflow.cli.commands.remote_commands.dag_command",
    "airflow.models.dag",
    "airflow.models.dagrun",
    "airflow.models.taskinstance",
    "airflow.sdk",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.api_fastapi.execution_api.app",
    "airflow.providers.standard.operators.python",
    "airflow_provider_runcomfy.operators",
    "airflow_provider_runcomfy.triggers",
)


def differs(env: dict[str, str], server_env: dict[str, str]) -> bool:
    """Whether a command's environment changes what Airflow read at import (then: no fork)."""

    def imported(e: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in e.items() if k.startswith(("AIRFLOW_HOME", "AIRFLOW__", "PYTHON"))}

    return imported(env) != imported(server_env)


class ForkServer:
    """The client side: starts the server, runs commands through it, stops it by pid."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = dict(env)
        self.socket_path = folder / "forkserver.sock"
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.socket_path)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=(folder / "forkserver.log").open("w"),
            stderr=subprocess.STDOUT,
        )

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.count += 1
        out = self.folder / f"cmd-{self.count}.out"
        err = self.folder / f"cmd-{self.count}.err"
        request = {"args": args, "env": env, "cwd": os.getcwd(), "stdout": str(out), "stderr": str(err)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(120)  # the server imports Airflow before it accepts
            self._connect(conn)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reader = conn.makefile("r", encoding="utf-8")
            pid = int(json.loads(reader.readline())["pid"])
            conn.settimeout(timeout)
            try:
                line = reader.readline()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                conn.settimeout(30)
                reader.readline()
                raise subprocess.TimeoutExpired(["airflow", *args], timeout) from None
        if not line:
            raise RuntimeError(f"the fork server ended; see {self.folder / 'forkserver.log'}")
        code = int(json.loads(line)["returncode"])
        return subprocess.CompletedProcess(
            ["airflow", *args], code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )

    def _connect(self, conn: socket.socket) -> None:
        for _ in range(1200):  # up to 120 s while the server imports
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fork server exited; see {self.folder / 'forkserver.log'}")
            try:
                conn.connect(str(self.socket_path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)
        raise RuntimeError("the fork server did not start listening within 120 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the command's process, run ``airflow``, return its exit code."""
    os.setsid()  # the client kills the command's whole group on a timeout
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = ["airflow", *request["args"]]
    from airflow.__main__ import main

    try:
        main()
        return 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve(socket_path: str) -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(socket_path)
        listener.listen(4)
        print("fork server: listening", flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                request = json.loads(conn.makefile("r", encoding="utf-8").readline())
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    code = 1
                    try:
                        code = _child(request)
                    finally:
                        with contextlib.suppress(BaseException):
                            atexit._run_exitfuncs()
                            sys.stdout.flush()
                            sys.stderr.flush()
                        os._exit(code)
                with contextlib.suppress(OSError):  # a client that timed out may be gone
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    conn.sendall(
                        json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n"
                    )


if __name__ == "__main__":
    serve(sys.argv[1])
