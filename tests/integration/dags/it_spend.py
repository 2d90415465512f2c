"""DAGs the spend tests drive: cost, budgets and schema checks, each with its inputs from params.

``max_cost_usd`` and ``on_schema_unavailable`` are not templated, so each variant is its own DAG.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param
from it_common import BATCH, one_task_dag

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.runcomfy import RunComfyModelOperator

VIDEO = "wan-ai/wan-2-2/image-to-video"
MODEL = {"model_id": Param(VIDEO, type="string")}


def model_dag(dag_id: str, **kwargs: object) -> DAG:
    params = {**MODEL, "input": Param({}, type="object")}
    return one_task_dag(
        dag_id,
        params,
        RunComfyModelOperator,
        native=True,
        task_id="run",
        model_id="{{ params.model_id }}",
        input="{{ params.input }}",
        **kwargs,
    )


it_spend_model = model_dag("it_spend_model")
it_spend_budget = model_dag("it_spend_budget", max_cost_usd=0.30)
it_spend_schema_fail = model_dag("it_spend_schema_fail", on_schema_unavailable="fail")


def batch_dag(dag_id: str, **kwargs: object) -> DAG:
    params = {**MODEL, "inputs": Param([], type="array"), "output_dir": Param("/tmp/it-spend", type="string")}
    return one_task_dag(
        dag_id,
        params,
        RunComfyBatchOperator,
        native=True,
        **BATCH,
        model_id="{{ params.model_id }}",
        **{"max_in_flight": 2, **kwargs},
    )


it_spend_batch = batch_dag("it_spend_batch", max_in_flight=5)
it_spend_batch_budget = batch_dag("it_spend_batch_budget", max_cost_usd=0.03)
it_spend_batch_priced_budget = batch_dag("it_spend_batch_priced_budget", max_cost_usd=1.0)
