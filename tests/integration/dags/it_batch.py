"""DAGs the batch integration tests drive: ``RunComfyBatchOperator`` over inputs given as params.

Each test passes the inputs, ``output_dir`` and (where it matters) the prompt rules through
``-c``; the emulator decides how each job runs (``add_rule`` on the prompt).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator

PARAMS = {
    "inputs": Param([], type=["array", "string"], description="inputs, or a JSON-lines URI"),
    "output_dir": Param("/tmp/it-batch", type="string"),
}


def batch_dag(dag_id: str, **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params=PARAMS,
        render_template_as_native_obj=True,
    ) as dag:
        RunComfyBatchOperator(
            task_id="batch",
            model_id="google/nano-banana/edit",
            inputs="{{ params.inputs }}",
            output_dir="{{ params.output_dir }}",
            poll_interval=0.2,
            **{"max_in_flight": 3, **operator_kwargs},
        )
    return dag


it_batch = batch_dag("it_batch")
it_batch_blocking = batch_dag("it_batch_blocking", deferrable=False)
it_batch_retry = batch_dag("it_batch_retry", retries=1, retry_delay=timedelta(seconds=0))
it_batch_strict = batch_dag("it_batch_strict", max_invalid_items=0, max_failed_items=0)
it_batch_timeout = batch_dag("it_batch_timeout", timeout=4)
it_batch_wide = batch_dag("it_batch_wide", max_in_flight=10)


class WorkerDiesOnFirstTry(RunComfyBatchOperator):
    """Dies between two submits of its first try (the budget seam is asked with no submit on the wire)."""

    def may_submit(self, item, spend):  # type: ignore[no-untyped-def]
        from airflow.sdk import get_current_context

        if get_current_context()["ti"].try_number == 1 and spend.submitted >= 4:
            raise RuntimeError("simulated worker death after 4 submits")
        return True


with DAG(
    dag_id="it_batch_worker_dies",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
    render_template_as_native_obj=True,
) as it_batch_worker_dies:
    WorkerDiesOnFirstTry(
        task_id="batch",
        model_id="google/nano-banana/edit",
        inputs="{{ params.inputs }}",
        output_dir="{{ params.output_dir }}",
        poll_interval=0.2,
        max_in_flight=3,
        submit_concurrency=1,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
