"""A person approves the edited picture before it is published (Airflow's human-in-the-loop operators).

The approval's text shows the edit itself -- the input beside the output, served by the
provider's outputs view -- and links to the full view, so the reviewer decides on the
picture, not on a URL. Rejecting skips ``publish``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, task
from ui_common import KEPT, ui_dag

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator

#: The outputs view of the ``edit`` task of this run, and its pictures (``plugins.app`` routes).
VIEW = "/runcomfy/{view}/{{{{ dag.dag_id }}}}/{{{{ run_id | urlencode }}}}/edit{tail}"

with ui_dag("runcomfy_review", publish_dir=Param("/tmp/runcomfy-ui-published", type="string")):
    edit = FluxKontextProEditOperator(
        task_id="edit",
        prompt="Give her a red scarf",
        image_url="{{ params.emulator }}/samples/portrait.png",
        **KEPT,
    )

    review = ApprovalOperator(
        task_id="review",
        subject="Publish the edited portrait?",
        body=(
            "Model *{{ ti.xcom_pull(task_ids='edit')['model_id'] }}*, "
            "RunComfy request `{{ ti.xcom_pull(task_ids='edit')['request_id'] }}`. The input, then the edit:\n\n"
            "![the input](" + VIEW.format(view="picture", tail="/-1/input/0") + ") "
            "![the edit](" + VIEW.format(view="picture", tail="/-1/output/0") + ")\n\n"
            "[Open the RunComfy outputs view](" + VIEW.format(view="outputs", tail="?map_index=-1") + ")"
        ),
    )

    @task
    def publish(edited: dict[str, Any], params: Any = None) -> str:
        """Copy the kept output to where published pictures go (a stand-in for a CMS upload)."""
        from airflow.sdk import ObjectStoragePath

        source = ObjectStoragePath(edited["stored"][0]["uri"])
        os.makedirs(params["publish_dir"], exist_ok=True)
        target = f"{params['publish_dir']}/{edited['request_id']}.png"
        with source.open("rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
        return target

    edit >> review >> publish(edit.output)
