"""Smoke DAG: two plain Python tasks, the second reads the first's XCom.

Proves that the scheduler queues tasks, the LocalExecutor runs them, and task processes
reach the API server's execution API (XCom push and pull go through it).
"""

from __future__ import annotations

from airflow.sdk import dag, task


@dag(dag_id="smoke_python", schedule=None, catchup=False, tags=["system-smoke"])
def smoke_python():
    @task
    def produce() -> dict[str, int]:
        return {"answer": 42}

    @task
    def consume(value: dict[str, int]) -> int:
        if value["answer"] != 42:
            raise ValueError(f"unexpected XCom {value!r}")
        return value["answer"]

    consume(produce())


smoke_python()
