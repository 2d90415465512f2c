"""Task processes of a deployment: the executor slots' workloads, finding and killing a task.

``TaskProcesses`` is the part of ``AirflowDeployment`` that connects a task instance (REST)
to the processes that run it (OS): a scenario kills a task, its supervisor or its whole
Celery worker, and reads from the supervisors' logs how long each task held a slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal

import psutil
from deployment_base import DeploymentError, epoch
from deployment_processes import ComponentProcesses, cmdline, sid, signal_all
from deployment_rest import AirflowRest


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


class TaskProcesses(ComponentProcesses, AirflowRest):
    """Task processes and executor workloads (see ``AirflowDeployment``)."""

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
                end = epoch(line.split(" ", 1)[0].replace("Z", "+00:00"))
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
        session = sid(pid)
        for name in self.worker_names:
            proc = self.procs.get(name)
            if proc is not None and proc.pid == session:
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
            victims = [p for p in self.processes() if sid(p.pid) == self.procs[worker].pid]
        signal_all(victims, signal.SIGKILL)
        left = self._wait_gone(victims, 10.0)
        if left:
            raise DeploymentError(f"SIGKILL left {[cmdline(p) for p in left]}")
        return worker or "local"
