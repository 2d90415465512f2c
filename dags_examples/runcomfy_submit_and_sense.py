"""Submit a RunComfy job in one task and wait for it with the sensor in another.

Useful when the submit happens elsewhere (another DAG, a service) and only the
request id reaches Airflow, or to keep the submit and the wait separately
retryable.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, validate_input
from airflow_provider_runcomfy.sensors.runcomfy import RunComfyRequestSensor

with DAG(
    dag_id="runcomfy_submit_and_sense",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example"],
    params={
        "image_url": Param(
            "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp",
            type="string",
        ),
    },
) as dag:

    @task
    def submit(params: dict) -> str:
        """Submits without waiting and returns the request id (validated before the paid call)."""
        payload = validate_input(
            FLUX_KONTEXT_PRO_EDIT, {"prompt": "Turn it into a watercolor", "image_url": params["image_url"]}
        )
        return RunComfyHook().submit(FLUX_KONTEXT_PRO_EDIT, payload).request_id

    request_id = submit()

    wait = RunComfyRequestSensor(
        task_id="wait",
        request_id=request_id,
        model_id=FLUX_KONTEXT_PRO_EDIT,
        poll_interval=2,
        timeout=600,
    )
