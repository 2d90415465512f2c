"""DAGs of the batch system scenarios (``tests/system/test_batch_scenarios.py``).

``runcomfy_batch_system``: one ``RunComfyBatchOperator`` over the run's ``inputs`` param,
copies in the run's ``output_dir`` param, 20 jobs in flight (more when the test's environment
says so), one quick retry (the kill
scenarios need the retry that resumes the batch). The test decides how long the jobs take
with an emulator rule matching a tag in the prompts.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator

with DAG(
    dag_id="runcomfy_batch_system",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "inputs": Param([], type="array"),
        "output_dir": Param("/tmp/runcomfy-batch-system", type="string"),
    },
    render_template_as_native_obj=True,
    tags=["system-runcomfy"],
) as runcomfy_batch_system:
    RunComfyBatchOperator(
        task_id="batch",
        model_id="google/nano-banana/edit",
        inputs="{{ params.inputs }}",
        output_dir="{{ params.output_dir }}",
        max_in_flight=int(os.environ.get("RUNCOMFY_BATCH_SYSTEM_MAX_IN_FLIGHT", "20")),
        poll_interval=0.5,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
