"""What the integration test DAGs share: one DAG shape, and the templated arguments of each operator.

Not a DAG file itself (it defines none): the test DAG files import it from the DAG folder,
which Airflow puts on ``sys.path`` for the DAG processor, ``airflow dags test`` and the task
runner alike. Every test DAG takes its inputs from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, BaseOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")

#: A seed-model edit whose prompt and picture come from params.
EDIT = {"task_id": "edit", "prompt": "{{ params.prompt }}", "image_url": "{{ params.image_url }}"}
#: A batch whose inputs and output folder come from params (``render_template_as_native_obj``).
BATCH = {"task_id": "batch", "inputs": "{{ params.inputs }}", "output_dir": "{{ params.output_dir }}"}


def it_dag(dag_id: str, params: dict[str, Any], *, native: bool = False) -> DAG:
    """An unscheduled DAG with these params; ``native`` renders templates as Python objects (lists)."""
    return DAG(
        dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        params=params,
        render_template_as_native_obj=native,
    )


def one_task_dag(
    dag_id: str, params: dict[str, Any], operator: type[BaseOperator], *, native: bool = False, **kwargs: Any
) -> DAG:
    """A DAG of one ``operator`` task that polls fast (0.2 s), unless ``kwargs`` say otherwise."""
    with it_dag(dag_id, params, native=native) as dag:
        operator(**{"poll_interval": 0.2, **kwargs})
    return dag
