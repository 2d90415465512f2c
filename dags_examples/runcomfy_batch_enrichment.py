"""A batch of image edits in one task: bounded in flight, resumable, with its copies, manifest and contact sheet.

One ``RunComfyBatchOperator`` runs nano-banana over every input image: it keeps at
most ``max_in_flight`` jobs at RunComfy, waits in the triggerer between refills
(no worker slot held), copies each output into ``output_dir`` (RunComfy's output
URLs are temporary) and writes ``manifest.jsonl`` -- one line per input: its request
id, status, output URLs, where each copy is and its sha256, or why it failed. A
summary task then draws ``contact_sheet.png`` (inputs beside outputs, one row per
input, green or red) next to it.

The inputs are read from ``data/batch_images.txt`` next to this file (the
``image_urls`` param overrides it). The shipped list ends with one URL on a
``.invalid`` host, which fails on purpose so you can see a failure recorded. For
thousands of images, give ``inputs`` the URI of a JSON-lines file instead of a list
(``s3://bucket/inputs.jsonl``): inputs then never pass through XCom.

**Outcome of a run.** The batch task **succeeds** when at least one image was
edited and lists every failed one (log and manifest); it **fails** when none was
(a token, balance or outage problem), after writing the manifest. Set
``max_failed_items`` to fail it past a threshold.

**Retries and clears.** A retry or a clear of the batch task resumes it from its
ledger in ``output_dir``: edited images are neither paid for nor copied again, jobs
still running are waited for, failed images are submitted again.

**When to map instead.** ``runcomfy_batch_enrichment_mapped``, the second DAG of this
file, is the same batch as one mapped task per image (the older pattern): fine for a
handful of images where each one should be its own task in the grid (its own log,
retried or cleared alone), but Airflow's own cost per image is ~30x higher (about 0.6
CPU-s and 2.5 worker-slot-s) and ``[core] max_map_length`` (1,024) caps it. Its tasks
use the pool ``runcomfy`` to cap the jobs at once; create it with ``airflow pools set
runcomfy 4 "RunComfy concurrency" --include-deferred`` (without ``--include-deferred``
a pool counts the short submit and resume steps, not the jobs waiting in between). It
has no retries: a retried failed job would be paid again. See docs/batch.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_runcomfy.compat import AirflowFailException
from airflow_provider_runcomfy.models import NANO_BANANA_EDIT
from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator, RunComfyBatchOperator

#: The default inputs, shipped with this example.
IMAGE_LIST = Path(__file__).parent / "data" / "batch_images.txt"

#: The params of both DAGs.
PARAMS: dict[str, Any] = {
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
}


#: What both DAGs of this file have in common: triggered by hand, the same params.
DAG_ARGUMENTS: dict[str, Any] = {
    "schedule": None,
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "tags": ["runcomfy", "example"],
    "params": PARAMS,
}


def image_urls(params: dict[str, Any]) -> list[str]:
    """The input images; a real pipeline would list a bucket or query a table here."""
    urls = list(params["image_urls"])
    if not urls:
        lines = IMAGE_LIST.read_text().splitlines()
        urls = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not urls:
        raise AirflowFailException(f"No input images: set the image_urls param or fill {IMAGE_LIST}.")
    return urls


with DAG(dag_id="runcomfy_batch_enrichment", **DAG_ARGUMENTS) as dag:

    @task
    def list_inputs(params: dict[str, Any]) -> list[dict[str, Any]]:
        """One nano-banana input per image; for thousands, write a JSON-lines file and pass its URI."""
        return [{"prompt": params["prompt"], "image_urls": [url]} for url in image_urls(params)]

    edit = RunComfyBatchOperator(
        task_id="edit",
        model_id=NANO_BANANA_EDIT,
        inputs=list_inputs(),
        output_dir="{{ params.output_dir }}",
        max_in_flight=4,
        poll_interval=2,
        timeout=900,
    )

    @task(trigger_rule="all_done")
    def summarize(**context: Any) -> dict[str, Any]:
        """Draws the contact sheet next to the batch's manifest and hands over the counts."""
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
        from airflow_provider_runcomfy.outputs.contact_sheet import rows_from_records, write_contact_sheet
        from airflow_provider_runcomfy.outputs.manifest import read_manifest
        from airflow_provider_runcomfy.outputs.storage import write_atomically

        uri = context["ti"].xcom_pull(task_ids="edit", key="manifest")
        if not uri:
            raise AirflowFailException("The batch wrote no manifest; see the log of the task `edit`.")
        manifest = ObjectStoragePath(uri)
        records = read_manifest(manifest)
        # One row per input: its picture (the first image URL), then its kept copies.
        # Inputs are fetched under the provider's URL policy; naming the API lets it allow the
        # emulator's plain-http pictures on loopback (and nothing else) when that is the API.
        api_base_url = RunComfyHook().client.base_url
        rows = rows_from_records(
            [{**r, "input": (r["input"].get("image_urls") or [None])[0]} for r in records],
            api_base_url=api_base_url,
        )
        sheet = write_atomically(
            manifest.parent / "contact_sheet.png", lambda sink: write_contact_sheet(sink, rows)
        )
        stored = [copy for record in records for copy in record["stored"]]
        counts = {
            "images": len(records),
            "succeeded": sum(r["status"] == "succeeded" for r in records),
            "failed": sum(r["status"] != "succeeded" for r in records),
            "outputs_stored": len(stored),
            "bytes_stored": sum(int(copy["bytes"] or 0) for copy in stored),
        }
        print(f"{counts['succeeded']} of {counts['images']} images edited; manifest: {manifest}")
        print(f"contact sheet: {sheet}")
        if counts["succeeded"] == 0:
            raise AirflowFailException(f"No image could be edited; see {manifest}.")
        return {**counts, "manifest": str(manifest), "contact_sheet": str(sheet)}

    edit >> summarize()


with DAG(dag_id="runcomfy_batch_enrichment_mapped", **DAG_ARGUMENTS) as mapped_dag:

    @task
    def list_images(params: dict[str, Any]) -> list[str]:
        """The input images."""
        return image_urls(params)

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
    def summarize_mapped(inputs: list[str], **context: Any) -> dict[str, Any]:
        """Writes the manifest and the contact sheet of every item, whatever became of it."""
        from airflow_provider_runcomfy.outputs.contact_sheet import rows_from_records, write_contact_sheet
        from airflow_provider_runcomfy.outputs.manifest import batch_records, tally, write_manifest
        from airflow_provider_runcomfy.outputs.storage import run_directory, write_atomically

        records = batch_records(context, "edit", inputs)
        folder = run_directory(
            context["params"]["output_dir"], dag_id=mapped_dag.dag_id, run_id=context["run_id"]
        )
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

    edits >> summarize_mapped(images)
