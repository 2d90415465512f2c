"""DAGs the input-storage tests drive: an edit of an image named by path (s3://, local) or URL.

Each takes ``image_url`` and ``output_dir`` from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, NanoBananaEditOperator

PARAMS = {
    "prompt": Param("make it blue", type="string"),
    "image_url": Param("s3://inputs/in.png", type="string"),
    "second_image": Param("s3://inputs/in.png", type="string"),
    "output_dir": Param("", type="string"),
}


def inputs_dag(dag_id: str, **operator_kwargs: object) -> DAG:
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
            output_dir="{{ params.output_dir or None }}",
            poll_interval=0.2,
            **operator_kwargs,
        )
    return dag


class WorkerLostAfterTheJob(FluxKontextProEditOperator):
    """Stands for a worker lost once the job succeeded, before the task could finish (first try only)."""

    def finish(self, context: Any, outcome: Any) -> dict[str, Any]:
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the job succeeded")
        return super().finish(context, outcome)


def inputs_dag_of(dag_id: str, operator: type[FluxKontextProEditOperator], **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params=PARAMS,
    ) as dag:
        operator(
            task_id="edit",
            prompt="{{ params.prompt }}",
            image_url="{{ params.image_url }}",
            poll_interval=0.2,
            **operator_kwargs,
        )
    return dag


it_inputs = inputs_dag("it_inputs")
# A retry signs the picture again (a new signature), yet it is the same input: it re-attaches.
it_inputs_retry = inputs_dag_of(
    "it_inputs_retry", WorkerLostAfterTheJob, retries=1, retry_delay=timedelta(seconds=0)
)
it_inputs_blocking = inputs_dag("it_inputs_blocking", deferrable=False, sign_expiry=900)
it_inputs_unchecked = inputs_dag("it_inputs_unchecked", preflight="off")

with DAG(
    dag_id="it_inputs_nano",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params=PARAMS,
) as it_inputs_nano:
    # Two pictures from two places: one from S3 (signed), one local (inline).
    NanoBananaEditOperator(
        task_id="edit",
        prompt="{{ params.prompt }}",
        image_urls=["{{ params.image_url }}", "{{ params.second_image }}"],
        poll_interval=0.2,
    )


with DAG(
    dag_id="it_inputs_batch",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"inputs": Param([], type="array"), "output_dir": Param("/tmp/it-inputs-batch", type="string")},
    render_template_as_native_obj=True,
) as it_inputs_batch:
    # Items whose pictures come from S3, from disk and from the web, checked before any submit.
    RunComfyBatchOperator(
        task_id="batch",
        model_id="google/nano-banana/edit",
        inputs="{{ params.inputs }}",
        output_dir="{{ params.output_dir }}",
        poll_interval=0.2,
        max_in_flight=2,
    )
