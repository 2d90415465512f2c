"""DAGs of the compatibility checks (``tests/integration/test_compat.py``) that no other test DAG file has.

Run on every supported Airflow by ``scripts/compat``; inputs come from params (``-c``).
"""

from __future__ import annotations

from airflow.sdk import Param
from it_common import one_task_dag

from airflow_provider_runcomfy.operators.runcomfy import NanoBananaEditOperator

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
