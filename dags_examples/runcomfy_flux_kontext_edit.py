"""Edit one image with FLUX.1 Kontext [pro] on RunComfy, waiting in the triggerer.

Runs unchanged against RunComfy or the bundled emulator: the connection
``runcomfy_default`` decides which (see the README). Trigger it with
``{"image_url": "...", "prompt": "..."}`` to edit your own image.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator

with DAG(
    dag_id="runcomfy_flux_kontext_edit",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example"],
    params={
        "image_url": Param(
            "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp",
            type="string",
            description="A public https URL of the image to edit.",
        ),
        "prompt": Param("She is now holding an orange umbrella and smiling", type="string"),
    },
) as dag:
    edit = FluxKontextProEditOperator(
        task_id="edit",
        prompt="{{ params.prompt }}",
        image_url="{{ params.image_url }}",
        aspect_ratio="1:1",
        poll_interval=2,
        timeout=600,
    )

    @task
    def report(result: dict) -> list[str]:
        """Downstream tasks get the request id and output URLs from XCom."""
        print(f"RunComfy request {result['request_id']} produced: {result['outputs']}")
        return result["outputs"]

    report(edit.output)
