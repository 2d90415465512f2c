"""DAGs of the batch system scenarios (``tests/system/test_batch_scenarios.py``).

``runcomfy_batch_system``: one ``RunComfyBatchOperator`` over the run's ``inputs`` param,
copies in the run's ``output_dir`` param, 100 jobs in flight (unless
``RUNCOMFY_BATCH_SYSTEM_MAX_IN_FLIGHT`` in the test process's environment, which the
deployment's components inherit, says otherwise), one quick retry (the kill scenarios need
the retry that resumes the batch). The test decides how long the jobs take with an emulator
rule matching a tag in the prompts.
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
        max_in_flight=int(os.environ.get("RUNCOMFY_BATCH_SYSTEM_MAX_IN_FLIGHT", "100")),
        poll_interval=0.5,
        # The inputs' image URLs name a host that does not exist (the tests reach loopback only):
        # the default "warn" preflight would spend ~3 minutes of DNS failures on 1,000 items
        # before the first submit. The emulator does not fetch them.
        preflight="off",
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
