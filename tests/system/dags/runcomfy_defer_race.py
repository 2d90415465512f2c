"""DAGs of the defer/resume race scenario and benchmark (issue 20; ``tests/system/test_defer_race_deployment.py``,
``bench/defer_race.py``).

``runcomfy_defer_race_<n>``: ``n`` deferrable ``FluxKontextProEditOperator`` tasks (one mapped
task over ``n`` prompts), written as a new user writes them: ``retries=0``, the provider's
defaults but a 1 s poll (a short job's end is seen at once: the worst case for the race).
Each prompt carries the run's ``tag`` param and ``job-<i>``, so that the caller gives every
job its own length with an emulator rule.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
SIZES = (12, 50)


def job_prompt(tag: str, index: int) -> str:
    """The prompt of job ``index``: what an emulator rule matches (``prompt_contains``)."""
    return f"{tag} job-{index:03d}: make it blue"


for size in SIZES:
    with DAG(
        dag_id=f"runcomfy_defer_race_{size}",
        schedule=None,
        start_date=START,
        catchup=False,
        params={"tag": Param("race", type="string")},
        max_active_tasks=size,
        max_active_runs=1,
        tags=["system-runcomfy"],
    ):
        FluxKontextProEditOperator.partial(
            task_id="edit",
            image_url="https://images.example.com/system/000.png",
            poll_interval=1.0,
            timeout=600,
            retries=0,
        ).expand(prompt=[job_prompt("{{ params.tag }}", n) for n in range(size)])
