"""DAGs of the RunComfy system scenarios (``tests/system/test_runcomfy_*.py``).

Each DAG runs the provider's operators as a user would; the test decides how long the
emulated jobs take with an emulator rule matching the run's ``prompt`` param, so that
every run (and every test) has jobs of its own length and its own journal entries.

- ``runcomfy_fanout_<n>``: one mapped ``NanoBananaEditOperator`` over ``n`` images,
  deferrable (the default); the 50-image one runs in the pool ``runcomfy`` (the test
  creates it).
- ``runcomfy_deferred``: one deferrable ``FluxKontextProEditOperator``.
- ``runcomfy_blocking``: the same with ``deferrable=False`` (polls in the worker) and one
  quick retry, for the worker-death and blocking-kill scenarios.
- ``runcomfy_timeout`` / ``runcomfy_blocking_timeout``: ``timeout=5``.
- ``runcomfy_deferred_retry``: deferrable, one quick retry, and copies of the outputs in the
  ``output_dir`` param (none when empty), for the worker-loss scenarios.

The input images are https URLs on ``images.example.com``: the emulator does not fetch
them (no internet) but draws a stand-in picture, so the DAGs need nothing but the
``runcomfy_default`` connection.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, NanoBananaEditOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
#: Seconds between status polls: short, so that the scenarios see a job's end quickly.
POLL = 1.0
PARAMS = {"prompt": Param("make it blue", type="string")}


def image_url(n: int) -> str:
    return f"https://images.example.com/system/{n:03d}.png"


def fanout_dag(dag_id: str, count: int, pool: str | None = None) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        params=PARAMS,
        # Deferred tasks do not count against max_active_tasks; set high so that only the
        # executor slots (and the pool, if any) bound the running phases.
        max_active_tasks=64,
        max_active_runs=4,
        tags=["system-runcomfy"],
    ) as dag:
        NanoBananaEditOperator.partial(
            task_id="edit",
            prompt="{{ params.prompt }}",
            poll_interval=POLL,
            timeout=600,
            **({"pool": pool} if pool else {}),
        ).expand(image_urls=[image_url(n) for n in range(count)])
    return dag


def flux_dag(dag_id: str, params: dict[str, Param] | None = None, **operator_kwargs: object) -> DAG:
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=START,
        catchup=False,
        params=params or PARAMS,
        max_active_runs=4,
        tags=["system-runcomfy"],
    ) as dag:
        FluxKontextProEditOperator(
            task_id="edit",
            prompt="{{ params.prompt }}",
            image_url=image_url(0),
            poll_interval=POLL,
            **operator_kwargs,
        )
    return dag


runcomfy_fanout_2 = fanout_dag("runcomfy_fanout_2", 2)
runcomfy_fanout_10 = fanout_dag("runcomfy_fanout_10", 10)
runcomfy_fanout_20 = fanout_dag("runcomfy_fanout_20", 20)
runcomfy_fanout_50 = fanout_dag("runcomfy_fanout_50", 50, pool="runcomfy")

runcomfy_deferred = flux_dag("runcomfy_deferred", timeout=600)
runcomfy_blocking = flux_dag(
    "runcomfy_blocking", deferrable=False, timeout=600, retries=1, retry_delay=timedelta(seconds=1)
)
runcomfy_timeout = flux_dag("runcomfy_timeout", timeout=5)
runcomfy_blocking_timeout = flux_dag("runcomfy_blocking_timeout", deferrable=False, timeout=5)
runcomfy_deferred_retry = flux_dag(
    "runcomfy_deferred_retry",
    params={**PARAMS, "output_dir": Param("", type="string")},
    timeout=600,
    retries=1,
    retry_delay=timedelta(seconds=1),
    output_dir="{{ params.output_dir }}",
)
