"""The DAG the browser tests look at: an edit with kept copies, a mapped fan-out and a batch, each with a failure.

``params.emulator`` is the emulator's base URL (its sample pictures are the inputs) and
``params.output_dir`` where the copies go (``ui_common.ui_dag``); the test passes both.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task
from ui_common import KEPT, ui_dag

from airflow_provider_runcomfy.operators.runcomfy import (
    FluxKontextProEditOperator,
    NanoBananaEditOperator,
    RunComfyBatchOperator,
)

with ui_dag("runcomfy_ui"):

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
        **KEPT,
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
        retries=0,
        **KEPT,
    )

    NanoBananaEditOperator.partial(
        task_id="enrich",
        prompt="warm golden-hour light",
        retries=0,
        **KEPT,
    ).expand(image_urls=pictures())
