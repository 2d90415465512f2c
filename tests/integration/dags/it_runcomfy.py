"""DAGs the integration tests drive: one seed-model edit in each mode the tests need.

Every variant takes its inputs from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param
from it_common import EDIT, one_task_dag

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, RunComfyModelOperator
from airflow_provider_runcomfy.sensors.runcomfy import RunComfyRequestSensor

PARAMS = {
    "prompt": Param("make it blue", type="string"),
    "image_url": Param("https://images.example.com/in.png", type="string"),
    "aspect_ratio": Param("1:1", type="string"),
}


def flux_dag(dag_id: str, **kwargs: object) -> DAG:
    return one_task_dag(
        dag_id, PARAMS, FluxKontextProEditOperator, **EDIT, aspect_ratio="{{ params.aspect_ratio }}", **kwargs
    )


it_deferred = flux_dag("it_deferred")
it_blocking = flux_dag("it_blocking", deferrable=False)
it_timeout = flux_dag("it_timeout", timeout=2)
it_blocking_timeout = flux_dag("it_blocking_timeout", deferrable=False, timeout=2)
it_retry = flux_dag("it_retry", retries=1, retry_delay=timedelta(seconds=0))
it_retries = flux_dag("it_retries", retries=2, retry_delay=timedelta(seconds=0))
# A timeout shorter than the job, and retries that start once the job has finished (two, so that
# a triggerer slowed down past the 1 s deadline by a busy machine cannot fail the test).
it_retry_after_timeout = flux_dag(
    "it_retry_after_timeout", retries=2, retry_delay=timedelta(seconds=3), timeout=1
)


class StoreRefusingRequestIds:
    """The task's real ``task_state_store``, except that writing a request id fails.

    A fault nothing real produces on demand (the store is an API call through the
    supervisor); the intent, written before the submit, goes through for real.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def set(self, key: str, value: Any, **kwargs: Any) -> None:
        if isinstance(value, dict) and "request_id" in value:
            raise ConnectionResetError("the supervisor's connection was reset")
        self._store.set(key, value, **kwargs)


def refuse_request_id_writes(context: Any) -> None:
    from airflow_provider_runcomfy.compat import task_state_store  # a Variable below Airflow 3.3

    context["task_state_store"] = StoreRefusingRequestIds(task_state_store(context))


it_store_fails = flux_dag(
    "it_store_fails", retries=2, retry_delay=timedelta(seconds=0), pre_execute=refuse_request_id_writes
)

it_sense = one_task_dag(
    "it_sense",
    {"request_id": Param("unset", type="string")},
    RunComfyRequestSensor,
    task_id="wait",
    request_id="{{ params.request_id }}",
    deferrable=False,
    timeout=60,
)

it_generic_model = one_task_dag(
    "it_generic_model",
    {"model_id": Param("acme/video/generate", type="string"), "input": Param({}, type="object")},
    RunComfyModelOperator,
    native=True,
    task_id="run",
    model_id="{{ params.model_id }}",
    input="{{ params.input }}",
)
