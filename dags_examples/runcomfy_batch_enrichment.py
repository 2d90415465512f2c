"""A batch of image edits: one mapped nano-banana task per input image, bounded by a pool.

The pool ``runcomfy`` caps how many jobs run at once (RunComfy queues and
rate-limits per account); create it once with
``airflow pools set runcomfy 4 "RunComfy concurrency"``. Deferred tasks hold
no worker slot, so the pool, not the workers, is what bounds the batch.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator

with DAG(
    dag_id="runcomfy_batch_enrichment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example"],
    params={
        "image_urls": Param(
            [
                "https://playgrounds-storage-public.runcomfy.net/tools/7007/media-files/usecase2-2-input.png",
                "https://playgrounds-storage-public.runcomfy.net/tools/7063/media-files/usecase1-1-input.webp",
            ],
            type="array",
            minItems=1,
        ),
        "prompt": Param("Give the scene a warm golden-hour light", type="string", maxLength=1000),
    },
) as dag:

    @task
    def list_images(params: dict) -> list[str]:
        """The input images; a real pipeline would list a bucket or query a table here."""
        return list(params["image_urls"])

    edits = NanoBananaEditOperator.partial(
        task_id="edit",
        prompt="{{ params.prompt }}",
        pool="runcomfy",
        poll_interval=2,
        timeout=900,
        retries=1,
    ).expand(image_urls=list_images())

    @task
    def summarize(results: list[dict]) -> dict:
        """Collects the outputs of every mapped edit (XCom holds URLs, never files)."""
        outputs = [url for result in results for url in result["outputs"]]
        print(f"{len(results)} edits, {len(outputs)} output images")
        return {"edits": len(results), "outputs": outputs}

    summarize(edits.output)
