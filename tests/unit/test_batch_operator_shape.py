"""The batch operator is composed, not mixed: its parts get what they use as constructor arguments.

A mixin that declares ``log: Any`` and expects its host class to provide it hides where the value
comes from; a part built with ``BatchWorker(log=...)`` says it. These tests hold that shape, and
that the operator's seams and ``on_kill`` still reach the parts it builds when a worker part runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchSpend
from airflow_provider_runcomfy.batch.items import BatchItem
from airflow_provider_runcomfy.batch.transitions import Event, change
from airflow_provider_runcomfy.operators import _batch_finishing, _batch_worker
from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator
from airflow_provider_runcomfy.sources.prepare import PreparedBody

MODEL = "some/model"


def expected_from_the_host(cls: type) -> list[str]:
    """Attributes ``cls`` declares but neither takes in its constructor nor gives a default."""
    taken = set(inspect.signature(cls).parameters)
    return [
        name
        for name in inspect.get_annotations(cls)
        if name not in taken and not hasattr(cls, name) and not name.startswith("__")
    ]


def test_the_operator_is_mixed_from_nothing_but_airflow_s_base() -> None:
    assert RunComfyBatchOperator.__bases__ == (BaseOperator,)


def test_each_part_of_the_operator_takes_what_it_uses_in_its_constructor() -> None:
    parts = [
        cls
        for module in (_batch_worker, _batch_finishing)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    ]
    assert {cls.__name__ for cls in parts} == {"BatchWorker", "BatchFinishing", "BatchLineage"}
    assert {cls.__name__: expected_from_the_host(cls) for cls in parts} == {cls.__name__: [] for cls in parts}


def test_the_scan_sees_a_mixin_s_expectations() -> None:
    class Mixin:
        log: Any
        timeout: float | None
        result: dict[str, Any] | None = None

    @dataclasses.dataclass
    class Part:
        log: Any
        result: dict[str, Any] | None = dataclasses.field(default=None, init=False)

    assert expected_from_the_host(Mixin) == ["log", "timeout"]
    assert expected_from_the_host(Part) == []


class Seams(RunComfyBatchOperator):
    """A user's subclass: its own inputs and budget seams, which say when they are asked."""

    asked: list[str] = []

    def prepare_items(self, items: Sequence[BatchItem], *, for_submit: bool) -> list[PreparedBody]:
        self.asked.append(f"prepare_items(for_submit={for_submit})")
        return []

    def may_submit(self, item: BatchItem, spend: BatchSpend) -> bool:
        self.asked.append("may_submit")
        return False


class Hook:
    """The hook's two uses by the worker: its client settings and the cancels of ``on_kill``."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {"base_url": "http://127.0.0.1:1"}
        self.cancelled: list[str] = []

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)


def test_the_worker_is_built_from_the_rendered_fields_and_asks_the_subclass_s_seams(tmp_path: Path) -> None:
    task = Seams(task_id="batch", model_id="{{ params.model }}", inputs=[], output_dir=str(tmp_path))
    task.model_id = MODEL  # what rendering the template fields does, after the DAG was parsed
    worker = task._worker
    assert (worker.model_id, worker.output_dir) == (MODEL, str(tmp_path))
    assert worker.prepare_items([], for_submit=True) == []
    assert worker.may_submit(None, None) is False  # type: ignore[arg-type]
    assert task.asked == ["prepare_items(for_submit=True)", "may_submit"]


def test_on_kill_cancels_the_jobs_in_flight_of_the_batch_this_worker_opened(tmp_path: Path) -> None:
    task = RunComfyBatchOperator(
        task_id="batch", model_id=MODEL, inputs=[{"prompt": "a"}, {"prompt": "b"}], output_dir=str(tmp_path)
    )
    task.on_kill()  # killed before it opened a batch: nothing to cancel, nothing built
    assert "_worker" not in task.__dict__
    hook = Hook()
    task.hook = hook  # type: ignore[assignment]
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="batch", map_index=-1, try_number=1)
    run = task._worker.open({"ti": ti})  # type: ignore[typeddict-item]
    first = run.items[0]
    run.ledger.append([change(Event.CHECKED, item.key, [None], index=item.index) for item in run.items])
    run.ledger.append([change(Event.INTENDED, first.key, [L.READY])])
    run.ledger.append([change(Event.ACCEPTED, first.key, [L.INTENT], request_id="req-0", submitted_at=1.0)])
    task.on_kill()
    assert hook.cancelled == ["req-0"]
