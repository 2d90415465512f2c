"""Extra links: where "RunComfy output" and "Manifest" take a person from a task instance.

The browser tests click them in a real UI; here the URLs themselves, and which operators carry them.
"""

from __future__ import annotations

import pytest
from airflow.sdk.types import TaskInstanceKey

from airflow_provider_runcomfy.operators.links import RunComfyManifestLink, RunComfyOutputLink
from airflow_provider_runcomfy.operators.runcomfy import (
    FluxKontextProEditOperator,
    NanoBananaEditOperator,
    RunComfyModelOperator,
)

RUN = "manual__2026-01-01T00:00:00+00:00"
ENCODED = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"


@pytest.fixture(autouse=True)
def base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team/")


def key(map_index: int = -1) -> TaskInstanceKey:
    return TaskInstanceKey(dag_id="d", task_id="edit", run_id=RUN, try_number=1, map_index=map_index)


def test_runcomfy_output_opens_the_outputs_tab_of_the_task_instance() -> None:
    link = RunComfyOutputLink()
    operator = FluxKontextProEditOperator(task_id="edit", prompt="p", image_url="https://a/x.png")
    assert link.get_link(operator, ti_key=key()) == (
        f"https://airflow.example.com/team/dags/d/runs/{ENCODED}/tasks/edit/plugin/runcomfy-outputs"
    )
    assert link.get_link(operator, ti_key=key(3)) == (
        f"https://airflow.example.com/team/dags/d/runs/{ENCODED}/tasks/edit/mapped/3/plugin/runcomfy-outputs"
    )


def test_manifest_is_streamed_by_the_outputs_view() -> None:
    link = RunComfyManifestLink()
    assert link.get_link(None, ti_key=key(2)) == (  # type: ignore[arg-type]
        f"https://airflow.example.com/team/runcomfy/manifest/d/{ENCODED}/edit?map_index=2"
    )


@pytest.mark.parametrize(
    "operator_class", [RunComfyModelOperator, FluxKontextProEditOperator, NanoBananaEditOperator]
)
def test_every_model_operator_carries_the_output_link(operator_class: type) -> None:
    assert [link.name for link in operator_class.operator_extra_links] == ["RunComfy output"]
