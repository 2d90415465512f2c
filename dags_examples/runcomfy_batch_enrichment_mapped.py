"""The same batch as ``runcomfy_batch_enrichment``, as one mapped task per image (the older pattern).

Prefer ``RunComfyBatchOperator`` (``runcomfy_batch_enrichment.py``) for more than a few
dozen images: a mapped task costs Airflow about 0.6 CPU-s and 2.5 worker-slot-s per image
and stops at ``[core] max_map_length`` (1,024). Mapping still suits a handful of images
where each one should be its own task in the grid (its own log, retried or cleared alone).
See ``docs/batch.md``.

One mapped nano-banana task per input image edits it and copies the outputs
into ``output_dir`` (RunComfy's output URLs are temporary). A summary task then
writes, next to the copies,

- ``manifest.jsonl``: one line per input -- its request id, status, output URLs,
  where each copy is and its sha256, or the error of a failed item (asked of
  RunComfy);
- ``contact_sheet.png``: inputs beside outputs, one row per input, green or red.

The inputs are read from ``data/batch_images.txt`` next to this file (the
``image_urls`` param overrides it). The shipped list ends with one URL on a
``.invalid`` host, which fails on purpose so you can see a failure recorded.

**Outcome of a run.** One failed image does not lose the others: the summary
runs whatever happened (``trigger_rule="all_done"``) and the run **succeeds**
as long as at least one image was edited; the failed items are red in the
grid view and listed in the manifest. The run **fails** when no image could
be edited (a token, balance or outage problem), after writing the manifest.

**Concurrency.** The pool ``runcomfy`` caps how many jobs run at once
(RunComfy queues and rate-limits per account); create it once with
``airflow pools set runcomfy 4 "RunComfy concurrency" --include-deferred``.
Deferred tasks hold no worker slot, so the pool, not the workers, is what
bounds the batch -- and only with ``--include-deferred``: without it a pool
counts the short submit and resume steps, not the jobs waiting in between.

**Retries.** None here: transient API errors and broken downloads are already
retried inside each task, and a retried failed job would be paid for again.
Clearing a failed item re-runs it alone; copies already kept are not
downloaded again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator

#: The default inputs, shipped with this example.
IMAGE_LIST = Path(__file__).parent / "data" / "batch_images.txt"

with DAG(
    dag_id="runcomfy_batch_enrichment_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["runcomfy", "example"],
    params={
        "image_urls": Param(
            [],
            type="array",
            description="Input image URLs (public https). Empty: the list in data/batch_images.txt.",
        ),
        "prompt": Param("Give the scene a warm golden-hour light", type="string", maxLength=1000),
        "output_dir": Param(
            "file:///tmp/runcomfy-batch-enrichment",
            type="string",
            description="Where to keep the edited images, the manifest and the contact sheet: a local "
            "path or a URL such as s3://bucket/prefix.",
        ),
    },
) as dag:

    @task
    def list_images(params: dict[str, Any]) -> list[str]:
        """The input images; a real pipeline would list a bucket or query a table here."""
        urls = list(params["image_urls"])
        if not urls:
            lines = IMAGE_LIST.read_text().splitlines()
            urls = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not urls:
            raise AirflowFailException(f"No input images: set the image_urls param or fill {IMAGE_LIST}.")
        return urls

    images = list_images()

    edits = NanoBananaEditOperator.partial(
        task_id="edit",
        prompt="{{ params.prompt }}",
        output_dir="{{ params.output_dir }}",
        pool="runcomfy",
        poll_interval=2,
        timeout=900,
    ).expand(image_urls=images)

    @task(trigger_rule="all_done")
    def summarize(inputs: list[str], **context: Any) -> dict[str, Any]:
        """Writes the manifest and the contact sheet of every item, whatever became of it."""
        from airflow_provider_runcomfy.outputs.contact_sheet import rows_from_records, write_contact_sheet
        from airflow_provider_runcomfy.outputs.manifest import batch_records, tally, write_manifest
        from airflow_provider_runcomfy.outputs.storage import run_directory, write_atomically

        records = batch_records(context, "edit", inputs)
        folder = run_directory(context["params"]["output_dir"], dag_id=dag.dag_id, run_id=context["run_id"])
        manifest = write_manifest(folder / "manifest.jsonl", records)
        sheet = write_atomically(
            folder / "contact_sheet.png", lambda sink: write_contact_sheet(sink, rows_from_records(records))
        )
        counts = tally(records)
        print(f"{counts['succeeded']} of {counts['images']} images edited; manifest: {manifest}")
        print(f"contact sheet: {sheet}")
        for record in records:
            if record["error"]:
                print(f"failed: {record['input']} ({record['request_id']}): {record['error']}")
        if counts["succeeded"] == 0:
            raise AirflowFailException(f"No image could be edited; see {manifest}.")
        return {**counts, "manifest": str(manifest), "contact_sheet": str(sheet)}

    edits >> summarize(images)
