"""Smoke DAG: a deferrable sensor, then a Python task.

``wait`` defers to the triggerer (``DateTimeTrigger``) until ``conf["wait_seconds"]``
(default 15) after the sensor started.  Counting from the task's start, not from the run's,
is what makes "a deferred task holds no executor slot" measurable: with one slot, two runs
whose sensors held it would take two full waits, one after the other.  The moment is fixed
when the task defers and stored with the trigger, so a triggerer restart does not move it.
"""

from __future__ import annotations

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import dag, task


@dag(dag_id="smoke_deferrable", schedule=None, catchup=False, max_active_runs=4, tags=["system-smoke"])
def smoke_deferrable():
    wait = DateTimeSensorAsync(
        task_id="wait",
        target_time=(
            "{{ (ti.start_date + macros.timedelta(seconds=dag_run.conf.get('wait_seconds', 15)))"
            ".isoformat() }}"
        ),
    )

    @task
    def after_wait() -> str:
        return "resumed"

    wait >> after_wait()


smoke_deferrable()
