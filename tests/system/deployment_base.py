"""What every part of the system-test deployment shares: names, settings, the error, the wait.

``deployment.py`` assembles ``AirflowDeployment`` from ``deployment_config.py`` (components,
their environment and command lines), ``deployment_processes.py`` (starting, signalling and
stopping exactly our processes), ``deployment_rest.py`` (the API server's REST API) and
``deployment_tasks.py`` (task processes and executor workloads).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

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

#: Airflow's own defaults for the intervals ``deployment_config.py`` shortens for speed: a
#: deployment given these (``env_extra``) waits and heartbeats like ``airflow standalone`` and
#: most production ones. The defer/resume race (issue 20) hides behind the short intervals, so
#: the scenarios and the benchmark about it run on these.
AIRFLOW_DEFAULT_INTERVALS = {
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "5",
    "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "15",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "10",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "5",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "30",
}

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
TERMINAL_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class DeploymentError(RuntimeError):
    """The deployment did not start, did not become healthy, or a wait timed out."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    interval: float,
    what: str,
    details: Callable[[], str] = lambda: "",
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise ``DeploymentError`` after ``timeout``.

    ``details``: what to add to the error (the components' logs, a run's task states), so
    that a timed-out wait says why.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = details()
            raise DeploymentError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{extra}" if extra else "")
            )
        time.sleep(interval)


def epoch(iso: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp (Airflow's REST dates, its log lines)."""
    return datetime.fromisoformat(iso).timestamp()
