"""The DAG the browser tests look at: an edit with kept copies, a mapped fan-out and a batch, each with a failure.

``params.emulator`` is the emulator's base URL (its sample pictures are the inputs) and
``params.output_dir`` where the copies go; the test passes both when it triggers the run.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, NanoBananaEditOperator

with DAG(
    dag_id="runcomfy_ui",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "emulator": Param("http://127.0.0.1:9", type="string"),
        "output_dir": Param("file:///tmp/runcomfy-ui", type="string"),
    },
):

    @task
    def pictures(params: Any = None) -> list[str]:
        base = params["emulator"]
        # The last host does not exist: the emulator fails that job, as RunComfy would.
        return [
            f"{base}/samples/street.png",
            f"{base}/samples/product.png",
            "https://broken.invalid/gone.png",
        ]

    FluxKontextProEditOperator(
        task_id="edit",
        prompt="She is now holding an orange umbrella and smiling",
        image_url="{{ params.emulator }}/samples/portrait.png",
        aspect_ratio="3:4",
        output_dir="{{ params.output_dir }}",
        poll_interval=0.5,
    )

    @task
    def batch_inputs(params: Any = None) -> list[dict[str, Any]]:
        base = params["emulator"]
        pictures = [f"{base}/samples/{name}.png" for name in ("landscape", "street", "portrait")]
        return [{"prompt": "paint it as a watercolour", "image_urls": [url]} for url in pictures] + [
            {"prompt": "this one fails", "image_urls": ["https://broken.invalid/gone.png"]}
        ]

    RunComfyBatchOperator(
        task_id="batch",
        model_id="google/nano-banana/edit",
        inputs=batch_inputs(),
        output_dir="{{ params.output_dir }}",
        poll_interval=0.5,
        retries=0,
    )

    NanoBananaEditOperator.partial(
        task_id="enrich",
        prompt="warm golden-hour light",
        output_dir="{{ params.output_dir }}",
        poll_interval=0.5,
        retries=0,
    ).expand(image_urls=pictures())
