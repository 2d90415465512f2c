"""Reading Airflow's defer/resume race (issue 20) off a deployment: who failed although paid, who was exposed.

Shared by ``test_defer_race_deployment.py`` (a small run per topology in CI) and ``bench/defer_race.py``
(hundreds of tasks). A run of ``dags/runcomfy_defer_race.py`` gives each job its own length
(``plan_jobs``); ``read_race`` then puts side by side what RunComfy (the emulator) did with
each job and what Airflow did with its task:

- **failed while paid**: the task instance ended ``failed`` although its job succeeded (and
  was billed) -- what issue 20 is about, whatever the cause;
- **state mismatch**: the scheduler's "finished with state success, but the task instance's
  state attribute is ..." lines (the race's signature);
- **exposed**: the job had finished before the scheduler took the worker's defer exit (its
  ``TaskInstance Finished`` line): a trigger firing on the job's end, unheld, would have
  resumed the task inside the race window. This shows that a run exercised the race at all.
"""

from __future__ import annotations

import contextlib
import random
import re
from dataclasses import dataclass, field
from typing import Any

from deployment_base import epoch

#: The scheduler's "state mismatch" line (``process_executor_events``): the race's when the
#: executor reported ``success`` (a defer exit), a worker that died before running the task when
#: it reported ``failed`` (seen on a machine so loaded that the supervisor never reached the API
#: server: no job was submitted, nothing paid).
MISMATCH = "but the task instance's state attribute is"
RACE_MISMATCH = "finished with state success, " + MISMATCH
#: The scheduler's line when it takes an executor's report of a finished workload.
_FINISHED = re.compile(r"TaskInstance Finished: .*?ti_id=([0-9a-f-]+),")


def job_prompt(tag: str, index: int) -> str:
    """The prompt of job ``index`` of a run (as ``dags/runcomfy_defer_race.py`` renders it)."""
    return f"{tag} job-{index:03d}: make it blue"


def plan_jobs(emulator: Any, tag: str, count: int, low: float, high: float, seed: int) -> list[float]:
    """Give job ``i`` of the run tagged ``tag`` a length drawn evenly from [low, high] s; return them."""
    rng = random.Random(seed)
    lengths = [round(rng.uniform(low, high), 2) for _ in range(count)]
    for index, seconds in enumerate(lengths):
        emulator.add_rule(prompt_contains=f"{tag} job-{index:03d}:", queue_seconds=0, run_seconds=seconds)
    return lengths


@dataclass
class RaceReport:
    """What one run (or several, added up) showed."""

    tasks: int = 0
    succeeded: int = 0
    failed_while_paid: list[str] = field(default_factory=list)
    mismatch_lines: int = 0
    #: "State mismatch" lines of workloads that failed (not the race; see ``MISMATCH``).
    other_mismatch_lines: int = 0
    exposed: int = 0
    #: Seconds from a job's end to the scheduler taking its task's defer exit, for exposed tasks.
    exposure_seconds: list[float] = field(default_factory=list)
    submits: int = 0
    #: Seconds from a job's submit (just before its task deferred) to the scheduler taking the
    #: defer exit: how long the race window stays open; the guard must outlast it.
    window_seconds: list[float] = field(default_factory=list)
    #: Seconds each outcome the guard held back waited (the triggers' log lines).
    held_seconds: list[float] = field(default_factory=list)
    #: Seconds from a job's end to its task's end (the resume), for tasks that succeeded.
    resume_seconds: list[float] = field(default_factory=list)

    def add(self, other: RaceReport) -> None:
        self.tasks += other.tasks
        self.succeeded += other.succeeded
        self.failed_while_paid += other.failed_while_paid
        self.mismatch_lines += other.mismatch_lines
        self.exposed += other.exposed
        self.exposure_seconds += other.exposure_seconds
        self.submits += other.submits
        self.resume_seconds += other.resume_seconds
        self.window_seconds += other.window_seconds


def defer_exits(deployment: Any) -> dict[str, float]:
    """Epoch seconds at which the scheduler first took each task instance's workload end, by ti id.

    A deferrable task's first workload is the one that submitted and deferred: its end is the
    report the race is about.
    """
    taken: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in deployment.log_path("scheduler").read_text(errors="replace").splitlines():
            match = _FINISHED.search(line)
            if match is None or match.group(1) in taken:
                continue
            with contextlib.suppress(ValueError):
                taken[match.group(1)] = epoch(line.split(" ", 1)[0].replace("Z", "+00:00"))
    return taken


def mismatch_lines(deployment: Any, text: str = RACE_MISMATCH) -> int:
    """The scheduler's "state mismatch" lines so far (every run of the deployment): the race's by default."""
    with contextlib.suppress(OSError):
        return deployment.log_path("scheduler").read_text(errors="replace").count(text)
    return 0


def paid_request_ids(emulator: Any, tag: str) -> dict[int, str]:
    """The request id of each job of the run tagged ``tag`` that succeeded (was billed), by task map index."""
    paid = {}
    for job in emulator.jobs:
        match = re.search(rf"{re.escape(tag)} job-(\d+):", str(job.input.get("prompt", "")))
        if match and job.phase == "succeeded":
            paid.setdefault(int(match.group(1)), job.request_id)
    return paid


def read_race(deployment: Any, emulator: Any, dag_id: str, run_id: str, tag: str) -> RaceReport:
    """Compare the run's task instances with the emulator's jobs (see the module doc)."""
    response = deployment.api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    response.raise_for_status()
    tis = {ti["map_index"]: ti for ti in response.json()["task_instances"]}
    jobs = {}
    for job in emulator.jobs:
        prompt = str(job.input.get("prompt", ""))
        match = re.search(rf"{re.escape(tag)} job-(\d+):", prompt)
        if match:
            jobs.setdefault(int(match.group(1)), []).append(job)
    exits = defer_exits(deployment)
    report = RaceReport(tasks=len(tis), submits=sum(len(js) for js in jobs.values()))
    for index, ti in sorted(tis.items()):
        paid = [job for job in jobs.get(index, []) if job.phase == "succeeded"]
        if ti["state"] == "success":
            report.succeeded += 1
            if paid and ti.get("end_date"):
                report.resume_seconds.append(epoch(ti["end_date"]) - paid[0].finished_at)
        elif paid:
            report.failed_while_paid.append(f"{dag_id}/{run_id}/edit[{index}]: {ti['state']}")
        taken = exits.get(ti["id"])
        if paid and taken is not None:
            report.window_seconds.append(taken - paid[0].created_at)
        if paid and taken is not None and paid[0].finished_at < taken:
            report.exposed += 1
            report.exposure_seconds.append(taken - paid[0].finished_at)
    return report
