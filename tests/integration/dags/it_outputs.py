"""DAGs the output-copy tests drive: a flux edit with ``output_dir`` in each situation the tests need.

Every variant takes ``output_dir`` (and its inputs) from params, so a test passes them with ``-c``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task
from it_common import EDIT, it_dag, one_task_dag

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator
from airflow_provider_runcomfy.sensors.runcomfy import RunComfyRequestSensor

PARAMS = {
    "prompt": Param("make it blue", type="string"),
    "image_url": Param("https://images.example.com/in.png", type="string"),
    "output_dir": Param("file:///tmp/runcomfy-it-outputs", type="string"),
    # A file the retry callback writes the output dir's listing to (see ``list_output_dir``).
    "probe": Param("", type="string"),
}


def list_output_dir(context: Any) -> None:
    """on_retry_callback: what a failed try left in ``output_dir``, for the test to look at."""
    probe = context["params"]["probe"]
    if probe:
        root = Path(context["params"]["output_dir"].removeprefix("file://"))
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        Path(probe).write_text(json.dumps(files))


class CrashAfterCopy(FluxKontextProEditOperator):
    """Stands for a worker lost right after the copies were made, before the task could finish."""

    def finish(self, context: Any, outcome: Any) -> dict[str, Any]:
        result = super().finish(context, outcome)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the copy was made")
        return result


class LostBeforeReturn(FluxKontextProEditOperator):
    """A user's own typed operator (a name the provider never heard of) whose worker is lost on every try."""

    def finish(self, context: Any, outcome: Any) -> dict[str, Any]:
        super().finish(context, outcome)
        raise RuntimeError("worker lost before the task returned")


#: Keep copies; retry once at once, listing what the failed try left behind.
COPIES = {
    "output_dir": "{{ params.output_dir }}",
    "retries": 1,
    "retry_delay": timedelta(seconds=0),
    "on_retry_callback": list_output_dir,
}


def outputs_dag(
    dag_id: str, operator: type[FluxKontextProEditOperator] = FluxKontextProEditOperator, **kwargs: Any
) -> DAG:
    return one_task_dag(dag_id, PARAMS, operator, **EDIT, **{**COPIES, **kwargs})


it_outputs = outputs_dag("it_outputs")
it_outputs_blocking = outputs_dag("it_outputs_blocking", deferrable=False)
it_outputs_capped = outputs_dag("it_outputs_capped", max_output_bytes=1_000_000)
it_outputs_crash = outputs_dag("it_outputs_crash", operator=CrashAfterCopy)
it_outputs_lost = outputs_dag("it_outputs_lost", operator=LostBeforeReturn, retries=0)


with it_dag(
    "it_outputs_memory", {**PARAMS, "output_dir": Param("memory://runcomfy-it/outputs", type="string")}
) as it_outputs_memory:
    edit = FluxKontextProEditOperator(**EDIT, output_dir="{{ params.output_dir }}", poll_interval=0.2)

    @task
    def read_back(result: dict[str, Any]) -> dict[str, Any]:
        """A downstream task opens each copy (the memory filesystem lives in this process) and checks it."""
        from airflow.sdk import ObjectStoragePath

        checked = []
        for stored in result["stored"]:
            data = ObjectStoragePath(stored["uri"]).read_bytes()
            assert len(data) == stored["bytes"], (len(data), stored)
            assert hashlib.sha256(data).hexdigest() == stored["sha256"], stored
            assert data.startswith(b"\x89PNG"), data[:8]
            checked.append({"uri": stored["uri"], "bytes": len(data)})
        return {"checked": checked}

    read_back(edit.output)


with it_dag("it_outputs_sensor", PARAMS) as it_outputs_sensor:

    @task
    def submit(params: dict[str, Any]) -> str:
        """Submits elsewhere than the sensor, as a user's own code would."""
        from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

        response = RunComfyHook().submit(
            "blackforestlabs/flux-1-kontext/pro/edit",
            {"prompt": params["prompt"], "image_url": params["image_url"]},
        )
        return response.request_id

    submit() >> RunComfyRequestSensor(
        task_id="wait",
        request_id="{{ ti.xcom_pull(task_ids='submit') }}",
        output_dir="{{ params.output_dir }}",
        poll_interval=0.2,
    )
