"""DAGs the integration tests drive: one seed-model edit in each mode the tests need.

Every variant takes its inputs from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, RunComfyModelOperator

PARAMS = {
    "prompt": Param("make it blue", type="string"),
    "image_url": Param("https://images.example.com/in.png", type="string"),
    "aspect_ratio": Param("1:1", type="string"),
}


def flux_dag(dag_id: str, **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params=PARAMS,
    ) as dag:
        FluxKontextProEditOperator(
            task_id="edit",
            prompt="{{ params.prompt }}",
            image_url="{{ params.image_url }}",
            aspect_ratio="{{ params.aspect_ratio }}",
            poll_interval=0.2,
            **operator_kwargs,
        )
    return dag


it_deferred = flux_dag("it_deferred")
it_blocking = flux_dag("it_blocking", deferrable=False)
it_timeout = flux_dag("it_timeout", timeout=2)
it_blocking_timeout = flux_dag("it_blocking_timeout", deferrable=False, timeout=2)
it_retry = flux_dag("it_retry", retries=1, retry_delay=timedelta(seconds=0))

with DAG(
    dag_id="it_generic_model",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={"model_id": Param("acme/video/generate", type="string"), "input": Param({}, type="object")},
) as it_generic_model:
    RunComfyModelOperator(
        task_id="run", model_id="{{ params.model_id }}", input="{{ params.input }}", poll_interval=0.2
    )
