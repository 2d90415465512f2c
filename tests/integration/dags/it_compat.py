"""DAGs of the compatibility checks (``tests/integration/test_compat.py``) that no other test DAG file has.

Run on every supported Airflow by ``scripts/compat``; inputs come from params (``-c``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Param
from it_common import it_dag, one_task_dag

from airflow_provider_runcomfy.compat import TaskDeferred
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, NanoBananaEditOperator

it_compat_nano_blocking = one_task_dag(
    "it_compat_nano_blocking",
    {
        "prompt": Param("make it blue", type="string"),
        "image_urls": Param(["https://images.example.com/in.png"], type="array"),
    },
    NanoBananaEditOperator,
    native=True,
    task_id="edit",
    prompt="{{ params.prompt }}",
    image_urls="{{ params.image_urls }}",
    num_images=2,
    deferrable=False,
)


class DiesAfterItsSubmitOnTry1(FluxKontextProEditOperator):
    """Its first try dies right after the paid submit, before it waits (as a lost worker would)."""

    def execute(self, context: Any) -> Any:
        try:
            return super().execute(context)
        except TaskDeferred:
            if context["ti"].try_number == 1:
                raise RuntimeError("simulated worker death after the submit") from None
            raise


it_compat_dies_after_submit = one_task_dag(
    "it_compat_dies_after_submit",
    {
        "prompt": Param("make it blue", type="string"),
        "image_url": Param("https://images.example.com/in.png", type="string"),
    },
    DiesAfterItsSubmitOnTry1,
    task_id="edit",
    prompt="{{ params.prompt }}",
    image_url="{{ params.image_url }}",
    retries=1,
    retry_delay=timedelta(seconds=0),
)


class RedactsTheTokenItRead(BaseOperator):
    """Reads the connection as the operators do; returns its token as Airflow's masker redacts it."""

    def execute(self, context: Any) -> str:
        from airflow.sdk.execution_time.secrets_masker import redact

        token = RunComfyHook().settings["token"]
        return str(redact(f"[{token}]"))


with it_dag("it_compat_token_masked", {}) as it_compat_token_masked:
    RedactsTheTokenItRead(task_id="read")
