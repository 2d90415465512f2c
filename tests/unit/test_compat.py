"""The compatibility module: one answer per Airflow release, and the re-attach record below 3.3.

These run on every supported release (``scripts/compat``); each test asserts what the
running release must give, so the same file proves 3.0, 3.1, 3.2 and 3.3 in turn.
The Variable-backed store is read through Airflow's real secrets path
(``AIRFLOW_VAR_*`` environment variables come first); its writes go through the
Task SDK's API and are proved in real Airflow by ``tests/integration/test_compat.py``.
"""

from __future__ import annotations

import json
from typing import Any

import airflow
import pytest

from airflow_provider_runcomfy import compat
from airflow_provider_runcomfy.compat import VariableStateStore, task_state_store
from airflow_provider_runcomfy.operators._submit import STATE_KEY

RELEASE = tuple(int(part) for part in airflow.__version__.split(".")[:2])


class TaskInstance:
    dag_id = "nightly"
    run_id = "manual__2026-12-01T08:00:00+00:00"
    task_id = "edit"
    map_index = 3


def test_the_release_is_read_from_airflow_itself() -> None:
    assert compat.AIRFLOW_VERSION == RELEASE
    assert compat.HAS_TASK_STATE_STORE is (RELEASE >= (3, 3))
    assert compat.HAS_PLUGIN_TABS is (RELEASE >= (3, 1))


def test_the_moved_names_resolve_on_this_release() -> None:
    assert compat.BaseHook.__name__ == "BaseHook"
    assert issubclass(compat.AirflowFailException, Exception)
    assert compat.airflow_conf().get("core", "dags_folder")
    assert compat.has_fs("file") is not None


def test_the_operators_import_and_use_the_compat_names() -> None:
    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

    assert issubclass(RunComfyHook, compat.BaseHook)


def test_airflows_own_store_is_used_when_the_task_has_one() -> None:
    store = object()
    assert task_state_store({"task_state_store": store, "ti": TaskInstance()}) is store


def test_below_3_3_the_record_lives_in_a_variable_of_the_task_instance() -> None:
    found = task_state_store({"ti": TaskInstance()})
    if compat.HAS_TASK_STATE_STORE:
        assert found is None  # 3.3 always hands the task its store; a context without one has none
        return
    assert isinstance(found, VariableStateStore)
    assert found.identity == {
        "dag_id": "nightly",
        "run_id": "manual__2026-12-01T08:00:00+00:00",
        "task_id": "edit",
        "map_index": 3,
    }


def test_each_task_instance_and_key_has_its_own_variable_within_airflows_name_limit() -> None:
    long = "x" * 250
    names = {
        VariableStateStore(long, long, long, -1).variable_name(STATE_KEY),
        VariableStateStore(long, long, long, 0).variable_name(STATE_KEY),
        VariableStateStore(long, long, long, 0).variable_name("other"),
        VariableStateStore("a", "b", "c", None).variable_name(STATE_KEY),
    }
    assert len(names) == 4
    assert all(name.startswith(VariableStateStore.PREFIX) and len(name) <= 250 for name in names)


def _variable(monkeypatch: pytest.MonkeyPatch, name: str, value: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_VAR_{name.upper()}", value if isinstance(value, str) else json.dumps(value))


def test_a_record_is_read_back_for_its_own_task_instance_only(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = VariableStateStore("nightly", "run-1", "edit", -1)
    name = ours.variable_name(STATE_KEY)
    record = {"request_id": "req-1", "fingerprint": "f"}
    _variable(monkeypatch, name, {"task_instance": ours.identity, "key": STATE_KEY, "value": record})
    assert ours.get(STATE_KEY) == record


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        "[1, 2]",
        '"a string"',
        # Another task instance's record under our name (a hand-made or copied Variable).
        json.dumps({"task_instance": {"dag_id": "other"}, "key": STATE_KEY, "value": {"request_id": "r"}}),
    ],
)
def test_a_damaged_record_stops_the_task_instead_of_reading_as_nothing_paid(
    monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    ours = VariableStateStore("nightly", "run-1", "edit", -1)
    name = ours.variable_name(STATE_KEY)
    _variable(monkeypatch, name, damage)
    with pytest.raises(compat.AirflowFailException, match=f"Variable {name}.*Nothing was submitted"):
        ours.get(STATE_KEY)


def test_the_output_link_opens_the_outputs_tab_or_on_3_0_the_page_behind_it() -> None:
    from airflow_provider_runcomfy.operators.links import RunComfyOutputLink

    class Key:
        dag_id, run_id, task_id, map_index, try_number = "nightly", "run 1", "edit", -1, 1

    link = RunComfyOutputLink().get_link(None, ti_key=Key())  # type: ignore[arg-type]
    if RELEASE >= (3, 1):
        assert link.endswith("/dags/nightly/runs/run%201/tasks/edit/plugin/runcomfy-outputs")
    else:
        assert link.endswith("/runcomfy/outputs/nightly/run%201/edit?map_index=-1")


def test_dags_tests_in_process_comms_never_log_a_masked_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """``airflow dags test`` logs each message a task sends, a ``MaskSecret``'s value included."""
    import structlog
    from airflow.sdk.execution_time import supervisor, task_runner
    from airflow.sdk.execution_time.comms import MaskSecret

    comms = supervisor.InProcessSupervisorComms(supervisor=None)  # type: ignore[arg-type]
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    compat.omit_secret_values_from_test_log()
    compat.omit_secret_values_from_test_log()  # a second read of a connection wraps nothing twice
    with structlog.testing.capture_logs() as logs:  # at info: 3.3's configured level drops debug here
        comms.log.info("Sending request", msg=MaskSecret(value="s3cret-token", name=None))
        comms.log.info("Sending request", msg="GetVariable(key='k')")
    assert logs[0]["msg"] == "MaskSecret (value omitted)" and "s3cret" not in repr(logs)
    assert logs[1]["msg"] == "GetVariable(key='k')"


def test_a_real_workers_comms_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.execution_time import task_runner

    class WorkerComms:
        log = object()

    comms = WorkerComms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    compat.omit_secret_values_from_test_log()
    assert comms.log is WorkerComms.log


# -- a retry handed the earlier try's trigger event (Airflow < 3.1.1) ------------------------------


@pytest.mark.parametrize(
    ("version", "release", "affected"),
    [
        ("3.0.6", (3, 0, 6), True),
        ("3.1.0", (3, 1, 0), True),
        ("3.1.0rc2", (3, 1, 0), True),
        ("3.1.1", (3, 1, 1), False),
        ("3.1.8", (3, 1, 8), False),
        ("3.3.2.dev0", (3, 3, 2), False),
        ("3.4", (3, 4, 0), False),
    ],
)
def test_the_releases_that_resume_an_old_deferral_on_retry(
    version: str, release: tuple[int, int, int], affected: bool
) -> None:
    assert compat._patch_release(version) == release
    assert (release < (3, 1, 1)) is affected


def test_this_release_is_judged_by_its_patch_level() -> None:
    running = compat._patch_release(airflow.__version__)
    assert running == compat.AIRFLOW_RELEASE
    assert running[:2] == RELEASE
    assert compat.RETRY_RESUMES_OLD_DEFERRAL is (running < (3, 1, 1))


class XComTaskInstance(TaskInstance):
    """A task instance's own XComs, as the Task SDK keeps them across a deferral."""

    def __init__(self, try_number: int, xcoms: dict[tuple[str, str, int], Any] | None = None) -> None:
        self.try_number = try_number
        self.map_index = -1
        self.xcoms = {} if xcoms is None else xcoms

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.task_id, key, self.map_index)] = value

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> Any:
        return self.xcoms.get((task_ids, key, map_indexes))


def test_a_retry_handed_the_event_of_the_try_before_it_is_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "RETRY_RESUMES_OLD_DEFERRAL", True)
    first = XComTaskInstance(try_number=1)
    compat.note_deferral({"ti": first})
    assert compat.resumes_an_earlier_try({"ti": first}) is False  # its own event: used
    retry = XComTaskInstance(try_number=2, xcoms=first.xcoms)  # 3.0 keeps the XComs for that retry
    assert compat.resumes_an_earlier_try({"ti": retry}) is True  # the first try's event: not used
    compat.note_deferral({"ti": retry})  # the retry re-attached and deferred itself
    assert compat.resumes_an_earlier_try({"ti": retry}) is False
    # No try noted (deferred by an older provider version), or no task instance: the event is used.
    assert compat.resumes_an_earlier_try({"ti": XComTaskInstance(try_number=2)}) is False
    assert compat.resumes_an_earlier_try({}) is False


def test_releases_that_start_a_retry_at_execute_note_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "RETRY_RESUMES_OLD_DEFERRAL", False)
    ti = XComTaskInstance(try_number=1)
    compat.note_deferral({"ti": ti})
    assert ti.xcoms == {}
    ti.xcoms[(ti.task_id, compat.DEFERRED_IN_TRY_KEY, -1)] = 1
    assert compat.resumes_an_earlier_try({"ti": XComTaskInstance(2, ti.xcoms)}) is False
