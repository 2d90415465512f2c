"""DAGs the batch integration tests drive: ``RunComfyBatchOperator`` over inputs given as params.

Each test passes the inputs, ``output_dir`` and (where it matters) the prompt rules through
``-c``; the emulator decides how each job runs (``add_rule`` on the prompt).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param
from it_common import BATCH, one_task_dag

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator

NANO_BATCH = {"model_id": "google/nano-banana/edit", "max_in_flight": 3}
PARAMS = {
    "inputs": Param([], type=["array", "string"], description="inputs, or a JSON-lines URI"),
    "output_dir": Param("/tmp/it-batch", type="string"),
}


def batch_dag(
    dag_id: str, operator: type[RunComfyBatchOperator] = RunComfyBatchOperator, **kwargs: object
) -> DAG:
    return one_task_dag(dag_id, PARAMS, operator, native=True, **BATCH, **{**NANO_BATCH, **kwargs})


class WorkerDiesOnFirstTry(RunComfyBatchOperator):
    """Dies between two submits of its first try (the budget seam is asked with no submit on the wire)."""

    def may_submit(self, item, spend):  # type: ignore[no-untyped-def]
        from airflow.sdk import get_current_context

        if get_current_context()["ti"].try_number == 1 and spend.submitted >= 4:
            raise RuntimeError("simulated worker death after 4 submits")
        return True


RETRY_AT_ONCE: dict[str, Any] = {"retries": 1, "retry_delay": timedelta(seconds=0)}

it_batch = batch_dag("it_batch")
it_batch_blocking = batch_dag("it_batch_blocking", deferrable=False)
it_batch_retry = batch_dag("it_batch_retry", **RETRY_AT_ONCE)
it_batch_strict = batch_dag("it_batch_strict", max_invalid_items=0, max_failed_items=0)
it_batch_timeout = batch_dag("it_batch_timeout", timeout=4)
it_batch_wide = batch_dag("it_batch_wide", max_in_flight=10)
it_batch_worker_dies = batch_dag(
    "it_batch_worker_dies", WorkerDiesOnFirstTry, submit_concurrency=1, **RETRY_AT_ONCE
)
# Two executions of one batch task at once (``airflow tasks test`` twice on one run): 10 in flight.
it_batch_owners = batch_dag("it_batch_owners", max_in_flight=10, submit_concurrency=4)
# ``on_damaged_ledger`` from the environment of the ``tasks test`` that runs it (it is not templated).
it_batch_damaged = batch_dag(
    "it_batch_damaged", on_damaged_ledger=os.environ.get("IT_ON_DAMAGED_LEDGER", "fail")
)
