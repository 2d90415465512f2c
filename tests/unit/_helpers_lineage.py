"""Lineage as the OpenLineage provider's listener asks for it, for the model and batch operator tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from airflow.providers.openlineage.extractors.manager import ExtractorManager
from airflow.utils.state import TaskInstanceState


def extract(task: Any, state: TaskInstanceState = TaskInstanceState.SUCCESS) -> Any:
    """Lineage as the OpenLineage listener gets it (the provider's ``ExtractorManager``)."""
    return ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id="manual__1", dag_id="d"),
        task=task,
        task_instance_state=state,
        task_instance=SimpleNamespace(task_id=task.task_id, map_index=-1),
    )


def names(datasets: list[Any]) -> list[tuple[str, str]]:
    """Each dataset as ``(namespace, name)``."""
    return [(d.namespace, d.name) for d in datasets]
