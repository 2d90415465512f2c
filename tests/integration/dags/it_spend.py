"""DAGs the spend tests drive: cost, budgets and schema checks, each with its inputs from params.

``max_cost_usd`` and ``on_schema_unavailable`` are not templated, so each variant is its own DAG.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.runcomfy import RunComfyModelOperator

VIDEO = "wan-ai/wan-2-2/image-to-video"


def model_dag(dag_id: str, **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        render_template_as_native_obj=True,
        params={"model_id": Param(VIDEO, type="string"), "input": Param({}, type="object")},
    ) as dag:
        RunComfyModelOperator(
            task_id="run",
            model_id="{{ params.model_id }}",
            input="{{ params.input }}",
            poll_interval=0.2,
            **operator_kwargs,
        )
    return dag


it_spend_model = model_dag("it_spend_model")
it_spend_budget = model_dag("it_spend_budget", max_cost_usd=0.30)
it_spend_schema_fail = model_dag("it_spend_schema_fail", on_schema_unavailable="fail")


def batch_dag(dag_id: str, **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        render_template_as_native_obj=True,
        params={
            "model_id": Param(VIDEO, type="string"),
            "inputs": Param([], type="array"),
            "output_dir": Param("/tmp/it-spend", type="string"),
        },
    ) as dag:
        RunComfyBatchOperator(
            task_id="batch",
            model_id="{{ params.model_id }}",
            inputs="{{ params.inputs }}",
            output_dir="{{ params.output_dir }}",
            poll_interval=0.2,
            **{"max_in_flight": 2, **operator_kwargs},
        )
    return dag


it_spend_batch = batch_dag("it_spend_batch", max_in_flight=5)
it_spend_batch_budget = batch_dag("it_spend_batch_budget", max_cost_usd=0.03)
it_spend_batch_priced_budget = batch_dag("it_spend_batch_priced_budget", max_cost_usd=1.0)
