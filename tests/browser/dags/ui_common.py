"""What the browser tests' DAGs share: the params the tests pass, and how their edits keep copies.

Not a DAG file (it defines none): the DAG files import it from the DAG folder, which Airflow
puts on ``sys.path`` for the DAG processor and the task runner alike.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

#: Every edit keeps its copies where the test says, and polls the (fast) emulator often.
KEPT = {"output_dir": "{{ params.output_dir }}", "poll_interval": 0.5}


def ui_dag(dag_id: str, **more_params: Param) -> DAG:
    """An unscheduled DAG whose run is told where the emulator is (its sample pictures are the
    inputs) and where the copies go; the test passes both when it triggers the run."""
    params = {
        "emulator": Param("http://127.0.0.1:9", type="string"),
        "output_dir": Param("file:///tmp/runcomfy-ui", type="string"),
        **more_params,
    }
    return DAG(
        dag_id,
        # A task whose job finished but which Airflow failed anyway (the defer/resume race,
        # docs/waiting.md) re-attaches on its retry without paying again; tasks that must
        # fail for the tests say retries=0.
        default_args={"retries": 1, "retry_delay": timedelta(seconds=2)},
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params=params,
    )
