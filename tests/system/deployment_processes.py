"""Starting, signalling and stopping exactly the processes of a deployment, and nothing else.

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

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import psutil
from deployment_base import DeploymentError
from deployment_config import TopologyConfig
from services import SERVICES


class ComponentProcesses(TopologyConfig):
    """The OS side of ``AirflowDeployment``: its component processes and everything they fork."""

    # Set by ``AirflowDeployment.__init__`` and ``start``.
    stop_timeout: float
    timings: dict[str, float]
    _env: dict[str, str]
    #: The current process of each component.
    procs: dict[str, subprocess.Popen[bytes]]
    #: Every component process ever started (a restarted triggerer has several).
    _popens: list[subprocess.Popen[bytes]]
    #: Session ids of every component ever started (a killed triggerer's session id stays
    #: here: its stragglers, if any, are still ours to stop).
    _sessions: set[int]
    #: (pid, create_time) of every process seen as ours, to catch a process that left our
    #: sessions (``setsid``) after its parent died.
    _seen: set[tuple[int, float]]

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
        while any(pgid(p.pid) == proc.pid for p in self.processes()) and time.monotonic() < deadline:
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

    def processes(self) -> list[psutil.Process]:
        """Every live process of this deployment: components, executor workers, task processes."""
        ours: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["status", "create_time"]):
            key = (proc.pid, proc.info["create_time"])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if key in self._seen or sid(proc.pid) in self._sessions:
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
        live_sessions = {sid(p.pid) for p in alive}
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

    def _stop_processes(self) -> None:
        """Stop every process of the deployment; raise if any survives (``stop()``'s steps)."""
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

        tasks = [p for p in airflow_processes() if pgid(p.pid) not in leaders]
        signal_all(tasks, signal.SIGTERM)
        signal_all(self._wait_gone(tasks, 2.0), signal.SIGKILL)
        self._wait_gone(tasks, 5.0)
        self.timings["stop_tasks"] = time.monotonic() - t0
        for group in leaders - services:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)  # a paused component cannot act on SIGTERM
                os.killpg(group, signal.SIGTERM)
        alive = self._wait_gone(airflow_processes(), min(3.0, self.stop_timeout))
        # A second SIGTERM is Airflow's own "don't wait" (the scheduler's "Signal again if
        # you don't want to wait", the triggerer's "Forcing exit due to second exit signal",
        # a Celery worker's cold shutdown): the triggerer otherwise waits 10 s for its
        # TriggerRunner after cancelling triggers.
        for group in (leaders - services) & {p.pid for p in alive}:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        alive = self._wait_gone(airflow_processes(), max(0.0, self.stop_timeout - 3.0))
        if alive:
            print(
                f"stop(): SIGKILL after {self.stop_timeout:.0f}s: {[cmdline(p) for p in alive]}",
                file=sys.stderr,
            )
        signal_all(alive, signal.SIGKILL)
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
            signal_all(leftovers, signal.SIGKILL)
            self._wait_gone(leftovers, 10.0)
        survivors = self.processes()
        self.timings["stop"] = time.monotonic() - t0
        if survivors:
            raise DeploymentError(f"processes survived stop(): {[(p.pid, cmdline(p)) for p in survivors]}")


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


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
