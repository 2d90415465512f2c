"""A DAG of a user who may read only it, naming another DAG's files as its own (``test_cross_dag``).

Its run is given, as params, the kept output and the manifest of ``runcomfy_ui``'s run --
paths the attacker learnt somehow. Each task names them where a RunComfy task would:

- ``steal_input``: as the input picture of an edit (the view must not serve a storage path
  named as an input: a param can name any file);
- ``steal_lines``: as the input of a batch line (a manifest line's path, same rule);
- ``fake_result``: as the kept copy and the manifest of a return value that looks like a
  RunComfy one (an XCom can be written by whoever may write this DAG's XComs).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param, task
from ui_common import KEPT, ui_dag

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, RunComfyBatchOperator

with ui_dag(
    "runcomfy_attacker",
    victim_copy=Param("/nowhere.png", type="string"),
    victim_manifest=Param("/nowhere.jsonl", type="string"),
):
    FluxKontextProEditOperator(
        task_id="steal_input", prompt="copy it", image_url="{{ params.victim_copy }}", retries=0, **KEPT
    )

    RunComfyBatchOperator(
        task_id="steal_lines",
        model_id="google/nano-banana/edit",
        inputs=[{"prompt": "copy it", "image_urls": ["{{ params.victim_copy }}"]}],
        retries=0,
        **KEPT,
    )

    @task
    def fake_result(params: Any = None) -> dict[str, Any]:
        return {
            "request_id": "fake_request",
            "model_id": "blackforestlabs/flux-1-kontext/pro/edit",
            "status": "succeeded",
            "outputs": [],
            "stored": [{"uri": params["victim_copy"], "bytes": 1, "sha256": "x"}],
            "manifest": params["victim_manifest"],
            "total": 1,
        }

    fake_result()
