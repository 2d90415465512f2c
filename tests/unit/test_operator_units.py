"""The operators' and sensor's own decisions, called directly: how they defer and how each event ends."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from airflow_provider_runcomfy.client import (
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    Outcome,
    OutcomeKind,
    RequestNotFoundError,
    RunComfyClient,
    RunComfyError,
    ServerError,
)
from airflow_provider_runcomfy.compat import AirflowFailException, TaskDeferred
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator, RunComfyModelOperator
from airflow_provider_runcomfy.sensors.runcomfy import RunComfyRequestSensor
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger


def flux(**kwargs: object) -> FluxKontextProEditOperator:
    return FluxKontextProEditOperator(task_id="edit", prompt="p", image_url="https://x/a.png", **kwargs)  # type: ignore[arg-type]


def test_it_defers_to_the_trigger_with_a_wall_clock_deadline_and_a_backstop() -> None:
    op = flux(runcomfy_conn_id="rc", poll_interval=2, timeout=300)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        op.wait_for({}, "req-1", FLUX_KONTEXT_PRO_EDIT)  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, RunComfyRequestTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["request_id"] == "req-1"
    assert kwargs["runcomfy_conn_id"] == "rc"
    assert kwargs["poll_interval"] == 2.0
    assert kwargs["model_id"] == FLUX_KONTEXT_PRO_EDIT
    assert before + 300 <= kwargs["deadline"] <= time.time() + 300
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(
        seconds=420
    )  # + policy.DEFER_TIMEOUT_MARGIN: the trigger's deadline fires first


def test_without_a_timeout_it_waits_forever() -> None:
    with pytest.raises(TaskDeferred) as deferred:
        flux(timeout=None).wait_for({}, "req-1", None)  # type: ignore[arg-type]
    assert deferred.value.timeout is None
    assert deferred.value.trigger.serialize()[1]["deadline"] is None


def test_a_succeeded_event_becomes_the_small_return_value() -> None:
    outcome = Outcome(
        kind=OutcomeKind.SUCCEEDED,
        request_id="r",
        model_id=FLUX_KONTEXT_PRO_EDIT,
        outputs=("https://cdn/x.png",),
        output={"image": "https://cdn/x.png"},
        created_at="t0",
        finished_at="t1",
        message="RunComfy request r succeeded.",
        cost_usd=0.04,
    )
    result = flux().execute_complete({}, outcome.to_event())  # type: ignore[arg-type]
    assert result == {
        "request_id": "r",
        "model_id": FLUX_KONTEXT_PRO_EDIT,
        "status": "succeeded",
        "outputs": ["https://cdn/x.png"],
        "output": {"image": "https://cdn/x.png"},
        "created_at": "t0",
        "finished_at": "t1",
        "cost_usd": 0.04,
    }
    json.dumps(result)


@pytest.mark.parametrize(
    ("event", "error", "retried_by_airflow"),
    [
        (
            {"status": "failed", "request_id": "r", "message": "RunComfy request r failed: oom"},
            JobFailedError,
            True,
        ),
        ({"status": "cancelled", "request_id": "r", "message": "cancelled"}, JobCancelledError, True),
        (
            {
                "status": "error",
                "request_id": "r",
                "message": "expired",
                "error_kind": "RequestNotFoundError",
            },
            RequestNotFoundError,
            True,
        ),
        (
            {
                "status": "error",
                "request_id": "r",
                "message": "bad token",
                "error_kind": "AuthenticationError",
            },
            AirflowFailException,
            False,
        ),
        (  # an event fired by an earlier version named the class ``error_type``
            {"status": "error", "request_id": "r", "message": "down", "error_type": "ServerError"},
            ServerError,
            True,
        ),
        (
            {"status": "error", "request_id": "r", "message": "?", "error_kind": "NoSuchKind"},
            RunComfyError,
            True,
        ),
    ],
)
def test_every_other_event_fails_the_task_with_its_message(
    event: dict[str, str], error: type[Exception], retried_by_airflow: bool
) -> None:
    with pytest.raises(error) as caught:
        flux().execute_complete({}, event)  # type: ignore[arg-type]
    assert event["message"] in str(caught.value)
    assert isinstance(caught.value, AirflowFailException) is not retried_by_airflow


def test_a_timeout_event_cancels_the_job_then_fails(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    runcomfy_emulator.set_config(queue_seconds=30)
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        request_id = client.submit(
            FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": "https://x/a.png"}
        ).request_id
        # Retryable: a retry submits anew, or re-attaches if the job could not be cancelled.
        with pytest.raises(JobTimeoutError, match="did not finish within timeout=7 s"):
            flux(timeout=7).execute_complete({}, {"status": "timeout", "request_id": request_id})  # type: ignore[arg-type]
        assert client.get_result(request_id).status.value == "cancelled"


def test_the_generic_operator_refuses_an_input_that_is_not_a_dict_after_rendering() -> None:
    op = RunComfyModelOperator(task_id="g", model_id="a/b", input="{{ params.x }}")
    op.input = "not a dict"  # what a bad template renders to
    with pytest.raises(RunComfyError, match="must be a dict"):
        op.build_input()


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> RunComfyEmulator:
    """The emulator, with connection ``runcomfy_default`` pointing at it."""
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    return runcomfy_emulator


def submitted(emu: RunComfyEmulator, prompt: str = "p", *, finished: bool = False) -> str:
    """A request submitted elsewhere (what a sensor waits for); ``finished`` waits until it is."""
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        request_id = client.submit(
            FLUX_KONTEXT_PRO_EDIT, {"prompt": prompt, "image_url": "https://x/a.png"}
        ).request_id
        if finished:
            client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 10)
    return request_id


def test_the_sensor_pokes_until_the_request_finishes(emu: RunComfyEmulator) -> None:
    request_id = submitted(emu)
    sensor = RunComfyRequestSensor(task_id="wait", request_id=request_id, deferrable=False, poll_interval=0.1)
    assert sensor.poke({}) is False  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while not (done := sensor.poke({})):  # type: ignore[arg-type]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert done.xcom_value["status"] == "succeeded"  # type: ignore[union-attr]
    assert done.xcom_value["request_id"] == request_id  # type: ignore[union-attr]


def test_the_sensor_pokes_again_while_the_outcome_is_not_written(emu: RunComfyEmulator) -> None:
    """/status says completed, /result still says completed: not yet -- never a failure."""
    request_id = submitted(emu, finished=True)
    emu.add_fault("result", "not_written", times=1)
    sensor = RunComfyRequestSensor(task_id="wait", request_id=request_id, deferrable=False)
    assert sensor.poke({}) is False  # type: ignore[arg-type]
    done = sensor.poke({})  # type: ignore[arg-type]
    assert done.xcom_value["status"] == "succeeded"  # type: ignore[union-attr]


def test_the_sensor_fails_on_a_failed_request_and_never_cancels(emu: RunComfyEmulator) -> None:
    emu.add_rule(prompt_contains="x", fail_message="bad luck")
    request_id = submitted(emu, "x", finished=True)
    sensor = RunComfyRequestSensor(task_id="wait", request_id=request_id, deferrable=False)
    with pytest.raises(JobFailedError, match="bad luck"):
        sensor.poke({})  # type: ignore[arg-type]
    with pytest.raises(JobTimeoutError):
        sensor.execute_complete({}, {"status": "timeout", "request_id": request_id, "message": "x"})  # type: ignore[arg-type]
    assert emu.journal.count("cancel") == 0


def test_the_sensor_refuses_a_bad_request_id_before_any_request(runcomfy_emulator: RunComfyEmulator) -> None:
    sensor = RunComfyRequestSensor(task_id="wait", request_id="../../etc")
    with pytest.raises(AirflowFailException, match="Invalid RunComfy request id"):
        sensor.execute({})  # type: ignore[arg-type]
    assert runcomfy_emulator.journal.count() == 0


def test_a_retry_handed_the_earlier_trys_event_starts_at_execute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow < 3.1.1 resumes a retry into the failed try's event; the operator runs ``execute``."""
    from airflow_provider_runcomfy import compat
    from airflow_provider_runcomfy.operators import _wait

    monkeypatch.setattr(compat, "RETRY_RESUMES_OLD_DEFERRAL", True)
    xcoms: dict[str, object] = {}

    class TI:
        task_id, map_index = "edit", -1

        def __init__(self, try_number: int) -> None:
            self.try_number = try_number

        def xcom_push(self, key: str, value: object) -> None:
            xcoms[key] = value

        def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> object:
            return xcoms.get(key)

    op = flux(timeout=60)
    with pytest.raises(TaskDeferred):
        op.wait_for({"ti": TI(1)}, "req-1", FLUX_KONTEXT_PRO_EDIT)  # type: ignore[arg-type]
    assert xcoms[compat.DEFERRED_IN_TRY_KEY] == 1
    stale_event = {"status": "timeout", "request_id": "req-1", "message": "x"}
    started: list[object] = []
    monkeypatch.setattr(op, "execute", lambda context: started.append(context["ti"]) or "from execute")
    # Its own try's event is used (here: the timeout fails the task; the cancel finds no connection).
    monkeypatch.setattr(_wait.RunComfyWaitMixin, "cancel_request", lambda self, request_id, why: None)
    with pytest.raises(JobTimeoutError):
        op.resume_execution("execute_complete", {"event": stale_event}, {"ti": TI(1)})  # type: ignore[arg-type]
    assert started == []
    retry = TI(2)
    assert op.resume_execution("execute_complete", {"event": stale_event}, {"ti": retry}) == "from execute"  # type: ignore[arg-type]
    assert started == [retry]


def test_a_mapped_task_whose_deferral_timed_out_cancels_its_own_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow's own defer timeout (``__fail__``) on map index 2 cancels map index 2's job only.

    Airflow's ``xcom_pull`` without ``map_indexes`` returns every map index's value (a list)
    for a mapped task; the operator must ask for its own.
    """
    from airflow_provider_runcomfy import compat
    from airflow_provider_runcomfy.operators import _wait

    # Every map index pushed its request id and (Airflow < 3.1.1) the try it deferred in: this one.
    pushed = {
        "request_id": {0: "req-0", 1: "req-1", 2: "req-2"},
        compat.DEFERRED_IN_TRY_KEY: {0: 1, 1: 1, 2: 1},
    }

    class MappedTI:
        task_id, map_index, try_number = "edit", 2, 1

        def xcom_pull(self, task_ids: str, key: str, map_indexes: object = None, **_: object) -> object:
            values = pushed.get(key, {})
            if isinstance(map_indexes, int):
                return values.get(map_indexes)
            return list(values.values())  # Airflow: every map index when none is given

    cancelled: list[object] = []
    monkeypatch.setattr(
        _wait.RunComfyWaitMixin, "cancel_request", lambda self, rid, why: cancelled.append(rid)
    )
    op = flux(timeout=60)
    with pytest.raises(Exception) as failed:  # noqa: PT011 -- Airflow's own "trigger timeout" failure
        op.resume_execution("__fail__", {"error": "Trigger timeout"}, {"ti": MappedTI()})  # type: ignore[arg-type]
    assert not isinstance(failed.value, AssertionError)
    assert cancelled == ["req-2"]
