"""DAGs the input-storage tests drive: an edit of an image named by path (s3://, local) or URL.

Each takes ``image_url`` and ``output_dir`` from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param
from it_common import BATCH, EDIT, one_task_dag

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, NanoBananaEditOperator

PARAMS = {
    "prompt": Param("make it blue", type="string"),
    "image_url": Param("s3://inputs/in.png", type="string"),
    "second_image": Param("s3://inputs/in.png", type="string"),
    "output_dir": Param("", type="string"),
}


def inputs_dag(
    dag_id: str, operator: type[FluxKontextProEditOperator] = FluxKontextProEditOperator, **kwargs: object
) -> DAG:
    # No output_dir given: it renders "None", which keeps no copies.
    return one_task_dag(
        dag_id, PARAMS, operator, **EDIT, output_dir="{{ params.output_dir or None }}", **kwargs
    )


class WorkerLostAfterTheJob(FluxKontextProEditOperator):
    """Stands for a worker lost once the job succeeded, before the task could finish (first try only)."""

    def finish(self, context: Any, outcome: Any) -> dict[str, Any]:
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the job succeeded")
        return super().finish(context, outcome)


it_inputs = inputs_dag("it_inputs")
# A retry signs the picture again (a new signature), yet it is the same input: it re-attaches.
it_inputs_retry = inputs_dag(
    "it_inputs_retry", WorkerLostAfterTheJob, retries=1, retry_delay=timedelta(seconds=0)
)
it_inputs_blocking = inputs_dag("it_inputs_blocking", deferrable=False, sign_expiry=900)
it_inputs_unchecked = inputs_dag("it_inputs_unchecked", preflight="off")

# Two pictures from two places: one from S3 (signed), one local (inline).
it_inputs_nano = one_task_dag(
    "it_inputs_nano",
    PARAMS,
    NanoBananaEditOperator,
    task_id="edit",
    prompt="{{ params.prompt }}",
    image_urls=["{{ params.image_url }}", "{{ params.second_image }}"],
)

# Items whose pictures come from S3, from disk and from the web, checked before any submit.
it_inputs_batch = one_task_dag(
    "it_inputs_batch",
    {"inputs": Param([], type="array"), "output_dir": Param("/tmp/it-inputs-batch", type="string")},
    RunComfyBatchOperator,
    native=True,
    **BATCH,
    model_id="google/nano-banana/edit",
    max_in_flight=2,
)
