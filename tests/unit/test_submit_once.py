"""Submit once per intent: the operator's record in ``task_state_store``, against the emulator over real HTTP.

``execute`` is called directly with a context holding an in-memory stand-in for
Airflow's task-state store (``get``/``set``/``delete``, as a task sees it): what an
earlier try left there is arranged by hand, and a store that fails is the real
object with pytest-mock on its ``set`` -- a fault nothing real produces on demand.
Submits are counted in the emulator's journal.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_mock import MockerFixture

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.compat import AirflowFailException, TaskDeferred
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT, validate_input
from airflow_provider_runcomfy.operators._submit import RECORD_ATTEMPTS, STATE_KEY
from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator


class MemoryStateStore:
    """``context["task_state_store"]`` as a task sees it, kept in memory (values go through JSON)."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class TaskInstance:
    task_id = "edit"

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> RunComfyEmulator:
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": runcomfy_emulator.token}
    conn["extra"] = {"max_retries": 0}  # type: ignore[assignment]
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))
    return runcomfy_emulator


def flux(emu: RunComfyEmulator, prompt: str = "make it blue", **kwargs: Any) -> FluxKontextProEditOperator:
    return FluxKontextProEditOperator(
        task_id="edit", prompt=prompt, image_url=emu.sample_url(), poll_interval=0.1, **kwargs
    )


def context(store: MemoryStateStore) -> Any:
    return {"task_state_store": store, "ti": TaskInstance()}


def intent_of(op: FluxKontextProEditOperator, at: str = "2026-12-01T08:00:00+00:00") -> dict[str, str]:
    payload = validate_input(op.model_id, op.build_input())
    return {"model_id": op.model_id, "fingerprint": input_fingerprint(op.model_id, payload), "at": at}


def test_the_intent_is_recorded_before_the_submit_and_the_request_id_right_after(
    emu: RunComfyEmulator, mocker: MockerFixture
) -> None:
    store = MemoryStateStore()
    writes = mocker.spy(store, "set")
    ctx = context(store)
    with pytest.raises(TaskDeferred):
        flux(emu).execute(ctx)
    (submit,) = emu.journal.of("submit")
    first, second = (call.args[1] for call in writes.call_args_list)
    assert set(first) == {"intent"}  # before the POST: no id yet
    assert first["intent"]["model_id"] == FLUX_KONTEXT_PRO_EDIT
    assert second["request_id"] == submit.request_id
    assert second["intent"] == first["intent"]
    assert ctx["ti"].xcoms["request_id"] == submit.request_id


def test_a_store_that_fails_after_the_paid_submit_cancels_the_job_and_fails_without_retry(
    emu: RunComfyEmulator, mocker: MockerFixture
) -> None:
    emu.set_config(queue_seconds=30)
    store = MemoryStateStore()
    keep = store.set

    def refuse_the_request_id(key: str, value: Any) -> None:
        if "request_id" in value:
            raise ConnectionResetError("the supervisor's connection was reset")
        keep(key, value)

    writes = mocker.patch.object(store, "set", side_effect=refuse_the_request_id)
    with pytest.raises(AirflowFailException) as caught:
        flux(emu).execute(context(store))
    (submit,) = emu.journal.of("submit")
    message = str(caught.value)
    assert f"RunComfy request {submit.request_id} was submitted" in message
    assert "will not be billed" in message  # it was still queued, so the cancel worked
    assert "not retried" in message
    job = emu.job(str(submit.request_id))
    assert job is not None and job.phase == "cancelled"
    assert writes.call_count == 1 + RECORD_ATTEMPTS  # the intent, then every attempt at the id


def test_a_store_write_that_fails_once_is_retried(emu: RunComfyEmulator, mocker: MockerFixture) -> None:
    store = MemoryStateStore()
    keep = store.set
    failures = [ConnectionResetError("blip")]

    def flaky(key: str, value: Any) -> None:
        if "request_id" in value and failures:
            raise failures.pop()
        keep(key, value)

    mocker.patch.object(store, "set", side_effect=flaky)
    with pytest.raises(TaskDeferred):
        flux(emu).execute(context(store))
    assert store.values[STATE_KEY]["request_id"] == emu.journal.of("submit")[0].request_id
    assert emu.journal.count("cancel") == 0


def test_an_intent_without_a_request_id_stops_the_retry_and_says_how_to_check(emu: RunComfyEmulator) -> None:
    op = flux(emu)
    intent = intent_of(op)
    with pytest.raises(AirflowFailException) as caught:
        op.execute(context(MemoryStateStore(**{STATE_KEY: {"intent": intent}})))
    message = str(caught.value)
    assert "RunComfy dashboard" in message
    assert intent["fingerprint"] in message
    assert intent["at"] in message
    assert "on_unknown_submit='resubmit'" in message
    assert emu.journal.count("submit") == 0


def test_on_unknown_submit_resubmit_submits_once(emu: RunComfyEmulator) -> None:
    op = flux(emu, on_unknown_submit="resubmit")
    store = MemoryStateStore(**{STATE_KEY: {"intent": intent_of(op)}})
    with pytest.raises(TaskDeferred):
        op.execute(context(store))
    assert emu.journal.count("submit") == 1
    assert store.values[STATE_KEY]["request_id"] == emu.journal.of("submit")[0].request_id


def test_an_unknown_submit_of_other_inputs_does_not_block_new_inputs(emu: RunComfyEmulator) -> None:
    earlier = intent_of(flux(emu, prompt="make it red"))
    with pytest.raises(TaskDeferred):
        flux(emu).execute(context(MemoryStateStore(**{STATE_KEY: {"intent": earlier}})))
    assert emu.journal.count("submit") == 1


def test_on_unknown_submit_accepts_only_its_two_words(emu: RunComfyEmulator) -> None:
    with pytest.raises(ValueError, match="on_unknown_submit"):
        flux(emu, on_unknown_submit="retry")


def test_a_submit_whose_answer_was_lost_fails_naming_what_was_sent_and_keeps_the_intent(
    emu: RunComfyEmulator,
) -> None:
    emu.add_fault("submit", "drop")  # the request reached RunComfy; the connection died before the answer
    store = MemoryStateStore()
    op = flux(emu)
    with pytest.raises(AirflowFailException) as caught:
        op.execute(context(store))
    message = str(caught.value)
    intent = store.values[STATE_KEY]["intent"]
    assert "request_id" not in store.values[STATE_KEY]
    assert f"sent to {FLUX_KONTEXT_PRO_EDIT} at {intent['at']}" in message
    assert f"input fingerprint {intent['fingerprint']}" in message
    with pytest.raises(AirflowFailException, match="may have created and billed"):
        op.execute(context(store))  # what a cleared task does next: it stops, it does not pay again
    assert emu.journal.count("submit") == 1


def test_a_refused_submit_forgets_its_intent_so_a_retry_may_submit(emu: RunComfyEmulator) -> None:
    emu.add_fault("submit", "http", times=1, status=429, retry_after=0)
    store = MemoryStateStore()
    with pytest.raises(Exception, match="rate-limiting"):
        flux(emu).execute(context(store))  # a 429 means no job was created
    assert STATE_KEY not in store.values
    with pytest.raises(TaskDeferred):
        flux(emu).execute(context(store))
    assert emu.journal.count("submit") == 2


def test_a_retry_waits_on_a_finished_job_whose_outcome_is_not_written_yet(emu: RunComfyEmulator) -> None:
    op = flux(emu)
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        payload = validate_input(op.model_id, op.build_input())
        request_id = client.submit(op.model_id, payload).request_id
        client.wait_for_result(request_id, poll_interval=0.1)
    emu.add_fault("result", "not_written", times=1)
    record = {"request_id": request_id, "fingerprint": input_fingerprint(op.model_id, payload)}
    ctx = context(MemoryStateStore(**{STATE_KEY: record}))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    assert deferred.value.trigger.serialize()[1]["request_id"] == request_id
    assert ctx["ti"].xcoms["request_id"] == request_id
    assert emu.journal.count("submit") == 1  # only the earlier try's


def test_reattach_false_records_nothing_and_always_submits(emu: RunComfyEmulator) -> None:
    op = flux(emu, reattach=False)
    store = MemoryStateStore(**{STATE_KEY: {"intent": intent_of(op)}})
    with pytest.raises(TaskDeferred):
        op.execute(context(store))
    assert emu.journal.count("submit") == 1
    assert store.values[STATE_KEY] == {"intent": intent_of(op)}


def test_a_missing_connection_fails_before_any_intent_is_recorded(emu: RunComfyEmulator) -> None:
    """Nothing was sent, so nothing may make the next try (after the connection is added) stop and ask."""
    try:
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # Airflow 3.0, 3.1
        from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef]

    store = MemoryStateStore()
    with pytest.raises(AirflowNotFoundException):
        flux(emu, runcomfy_conn_id="runcomfy_not_defined").execute(context(store))
    assert store.values == {}
    assert emu.journal.count("submit") == 0
