"""Smoke DAG: one Python task that sleeps ``conf["seconds"]`` (default 300).

Used to find and kill a running task's process, and to check that stopping the
deployment leaves no task process behind.
"""

from __future__ import annotations

import time

from airflow.sdk import dag, get_current_context, task


@dag(dag_id="smoke_sleep", schedule=None, catchup=False, max_active_runs=4, tags=["system-smoke"])
def smoke_sleep():
    @task(retries=0)
    def sleep() -> None:
        seconds = float(get_current_context()["dag_run"].conf.get("seconds", 300))
        time.sleep(seconds)

    sleep()


smoke_sleep()
