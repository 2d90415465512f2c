"""A 20-image batch as a reviewer meets it: named inputs, a cost per item, two that failed.

The browser test (``test_a_reviewer_sees_names_costs_and_failed_items``) opens its task tab
and its run's gallery and writes the screenshots ``docs/ui.md`` shows.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task
from ui_common import KEPT, ui_dag

from airflow_provider_runcomfy.operators.runcomfy import RunComfyBatchOperator

SAMPLES = ("portrait", "street", "product", "landscape")
PROMPTS = (
    "paint it as a watercolour",
    "warm golden-hour light",
    "turn the scene into a snowy winter morning",
    "make it look like a 1970s film photograph",
    "replace the background with a sunlit beach",
)

with ui_dag("runcomfy_batch20"):

    @task
    def catalogue(params: Any = None) -> list[dict[str, Any]]:
        base = params["emulator"]
        items = [
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "image_urls": [f"{base}/samples/{SAMPLES[i % len(SAMPLES)]}.png"],
            }
            for i in range(18)
        ]
        # Two inputs whose host does not exist: RunComfy (the emulator) fails them.
        items.insert(
            6, {"prompt": "brighten the shop window", "image_urls": ["https://broken.invalid/shop-7.png"]}
        )
        items.insert(
            13, {"prompt": "remove the tourists", "image_urls": ["https://broken.invalid/square-14.png"]}
        )
        return items

    RunComfyBatchOperator(
        task_id="enrich_catalogue",
        model_id="google/nano-banana/edit",
        inputs=catalogue(),
        retries=0,
        **KEPT,
    )
