"""Edit (or combine) images with Google's nano-banana on RunComfy.

Runs unchanged against RunComfy or the bundled emulator (connection
``runcomfy_default``). Trigger with ``{"image_urls": [...], "prompt": "..."}``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator

with DAG(
    dag_id="runcomfy_nano_banana_edit",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example"],
    render_template_as_native_obj=True,  # so image_urls renders as a list, not its text
    params={
        "image_urls": Param(
            ["https://playgrounds-storage-public.runcomfy.net/tools/7007/media-files/usecase2-2-input.png"],
            type="array",
            minItems=1,
            maxItems=10,
        ),
        "prompt": Param(
            "Blend a subtle blue-hour skyline into the background; preserve the main subject",
            type="string",
            maxLength=1000,
        ),
        "num_images": Param(2, type="integer", minimum=1, maximum=4),
    },
) as dag:
    NanoBananaEditOperator(
        task_id="edit",
        prompt="{{ params.prompt }}",
        image_urls="{{ params.image_urls }}",
        num_images="{{ params.num_images }}",
        output_format="png",
        poll_interval=2,
        timeout=600,
    )
