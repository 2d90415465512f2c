"""The operators in real Airflow (``airflow dags test``) talking real HTTP to the emulator.

Each test reads like the user's story and asserts on what a user sees: the
task's state, its XComs, its log, and what RunComfy (the emulator) received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator

from .conftest import AirflowEnv, DagRun

pytestmark = pytest.mark.integration

EXAMPLES = {
    "runcomfy_flux_kontext_edit": {"edit": "success", "report": "success"},
    "runcomfy_nano_banana_edit": {"edit": "success"},
    "runcomfy_submit_and_sense": {"submit": "success", "wait": "success"},
}


def conn_env(emu: RunComfyEmulator, token: str | None = None, **extra: object) -> dict[str, str]:
    """Connection ``runcomfy_default`` pointing at the emulator; extras as a user would set them."""
    conn = {"conn_type": "runcomfy", "host": emu.base_url, "password": token or emu.token, "extra": extra}
    return {"AIRFLOW_CONN_RUNCOMFY_DEFAULT": json.dumps(conn)}


def flux_conf(emu: RunComfyEmulator, prompt: str = "make it blue") -> dict[str, str]:
    return {"prompt": prompt, "image_url": emu.sample_url("portrait"), "aspect_ratio": "1:1"}


def run_edit(
    airflow: AirflowEnv,
    emu: RunComfyEmulator,
    dag_id: str = "it_deferred",
    prompt: str = "make it blue",
    **conn: Any,
) -> DagRun:
    """``airflow dags test`` of a flux edit DAG of ``it_runcomfy.py``; ``conn`` goes to :func:`conn_env`."""
    return airflow.dags_test(dag_id, conf=flux_conf(emu, prompt), env=conn_env(emu, **conn))


@pytest.fixture
def in_background() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Run something beside ``dags test`` (e.g. cancel the job it waits on); joined at the end."""
    threads: list[threading.Thread] = []

    def start(action: Callable[[], None]) -> None:
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(timeout=30)


def wait_for_submit(emu: RunComfyEmulator, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = emu.journal.last("submit")
        if entry is not None and entry.request_id:
            return entry.request_id
        time.sleep(0.05)
    raise AssertionError("the task never submitted")


def assert_failed_with(run: DagRun, *phrases: str) -> None:
    run.assert_states(edit="failed")
    for phrase in phrases:
        assert phrase in run.output, f"{phrase!r} not in the task log:\n{run.output[-3000:]}"


@pytest.mark.parametrize("dag_id", sorted(EXAMPLES))
def test_every_example_dag_runs_green_unchanged(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, dag_id: str
) -> None:
    run = airflow_env.dags_test(dag_id, env=conn_env(emu))
    assert run.task_states() == EXAMPLES[dag_id], run.output[-4000:]
    assert run.state == "success"


def test_a_deferred_edit_pushes_the_request_id_then_the_outputs(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = run_edit(airflow_env, emu)
    run.assert_states(edit="success")
    assert "Pausing task as DEFERRED" in run.output  # it waited in the trigger, not the worker
    (submit,) = emu.journal.of("submit")
    assert run.xcom("edit", key="request_id") == submit.request_id
    result = run.xcom("edit")
    assert result["request_id"] == submit.request_id
    assert result["model_id"] == "blackforestlabs/flux-1-kontext/pro/edit"
    assert result["status"] == "succeeded"
    assert result["outputs"] == [result["output"]["image"]]
    assert result["created_at"] and result["finished_at"]
    assert result["cost_usd"] > 0  # what RunComfy says it charged (``include_cost=true``)
    assert submit.json == {
        "prompt": "make it blue",
        "image_url": flux_conf(emu)["image_url"],
        "aspect_ratio": "1:1",
    }
    assert emu.token not in run.output
    # The trigger's last line before its event (issue 20): should Airflow fail the task now (its
    # defer/resume race), the log still says the job was paid and that a clear pays nothing.
    (billed,) = [line for line in run.output.splitlines() if "succeeded and was billed" in line]
    assert f"RunComfy request {submit.request_id} succeeded and was billed" in billed
    assert "re-attaches to this request and pays nothing again" in billed
    assert result["outputs"][0] not in billed  # a pre-signed URL is a credential


def test_blocking_mode_polls_in_the_worker_and_logs_each_state(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = run_edit(airflow_env, emu, "it_blocking")
    run.assert_states(edit="success")
    assert "DEFERRED" not in run.output
    assert "is in_queue (queue position 0)" in run.output
    assert "is in_progress" in run.output
    assert run.xcom("edit")["status"] == "succeeded"


def test_a_generic_model_returns_its_outputs(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    emu.add_rule(model_id="acme/video/generate", output_kind="videos", num_outputs=2)
    conf = {"model_id": "acme/video/generate", "input": {"prompt": "a cat", "duration": 5}}
    run = airflow_env.dags_test("it_generic_model", conf=conf, env=conn_env(emu))
    run.assert_states(run="success")
    result = run.xcom("run")
    assert len(result["outputs"]) == 2
    assert result["outputs"] == result["output"]["videos"]


def test_bad_rendered_inputs_fail_before_any_request(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    conf = {**flux_conf(emu), "aspect_ratio": "square"}
    run = airflow_env.dags_test("it_deferred", conf=conf, env=conn_env(emu))
    assert_failed_with(run, "aspect_ratio: 'square' is not one of 21:9")
    assert emu.journal.count() == 0


def test_a_failed_job_fails_the_task_with_runcomfys_reason(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    emu.add_rule(prompt_contains="forbidden", fail_message="content policy violation")
    run = run_edit(airflow_env, emu, "it_deferred", "forbidden")
    assert_failed_with(run, "failed: content policy violation", "JobFailedError")


def test_a_bad_token_fails_at_once_and_names_the_connection(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = run_edit(airflow_env, emu, "it_retry", token="revoked-token")
    assert_failed_with(run, "error 400004", "Airflow connection 'runcomfy_default'")
    assert emu.journal.count("submit") == 1  # AirflowFailException: the retry is skipped


def test_no_balance_says_so_plainly(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    emu.set_config(balance_usd=0.0)
    run = run_edit(airflow_env, emu)
    assert_failed_with(run, "no balance left", "top up")


def cancel_elsewhere(emu: RunComfyEmulator) -> None:
    """Cancel the task's job as someone else would: through the API, with the account's token."""
    from airflow_provider_runcomfy.client import RunComfyClient

    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        client.cancel(wait_for_submit(emu))


def expire(emu: RunComfyEmulator) -> None:
    emu.expire(wait_for_submit(emu))


@pytest.mark.parametrize(
    ("end_the_job", "phrases"),
    [
        (cancel_elsewhere, ("was cancelled before it ran", "JobCancelledError")),
        (expire, ("error 404001", "expired")),
    ],
    ids=["cancelled-elsewhere", "expired"],
)
def test_a_job_ended_elsewhere_fails_the_task_saying_what_to_do(
    airflow_env: AirflowEnv,
    emu: RunComfyEmulator,
    in_background: Callable[..., None],
    end_the_job: Callable[[RunComfyEmulator], None],
    phrases: tuple[str, ...],
) -> None:
    emu.set_config(queue_seconds=20)
    in_background(lambda: end_the_job(emu))
    run = run_edit(airflow_env, emu)
    assert_failed_with(run, *phrases)


@pytest.mark.parametrize("dag_id", ["it_timeout", "it_blocking_timeout"])
def test_a_timeout_cancels_the_job_then_fails_naming_the_timeout(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, dag_id: str
) -> None:
    emu.set_config(queue_seconds=60)
    run = run_edit(airflow_env, emu, dag_id)
    assert_failed_with(run, "did not finish within timeout=2 s", "will not be billed")
    (cancel,) = emu.journal.of("cancel")
    assert cancel.request_id == emu.journal.of("submit")[0].request_id
    assert emu.job(cancel.request_id).phase == "cancelled"  # type: ignore[union-attr]


def test_a_timeout_on_a_running_job_says_it_will_be_billed(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    emu.set_config(queue_seconds=0, run_seconds=60)
    run = run_edit(airflow_env, emu, "it_timeout")
    assert_failed_with(run, "did not finish within timeout=2 s", "RunComfy will finish and bill it")


def test_transient_poll_failures_are_tolerated(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    emu.add_fault("status", "http", times=2, status=503)
    emu.add_fault("status", "http", times=1, status=429, retry_after=0)
    run = run_edit(airflow_env, emu, max_retries=0)
    run.assert_states(edit="success")
    assert "tolerated in a row" in run.output


def release_after(emu: RunComfyEmulator, status_reads: int, timeout: float = 300) -> None:
    """Let held jobs run once RunComfy has answered ``status_reads`` status requests (or at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while emu.journal.count("status") < status_reads and time.monotonic() < deadline:
        time.sleep(0.05)
    emu.release()


@pytest.mark.parametrize(
    ("job_seconds", "held", "what_the_retry_does"),
    [
        # The first try loses RunComfy for longer than tolerated and fails; its job is still queued
        # when the retry looks (held until then, however slow `dags test` is on a loaded machine).
        ({"queue_seconds": 0, "run_seconds": 0.5}, True, "Re-attaching to RunComfy request"),
        # Four failed polls, 0.2 s apart, end the first try; the job finishes meanwhile.
        ({"queue_seconds": 0.1, "run_seconds": 0.2}, False, "Reusing the outputs of RunComfy request"),
    ],
    ids=["job-still-running", "job-already-succeeded"],
)
def test_a_retry_finds_the_job_of_the_failed_try_and_submits_nothing(
    airflow_env: AirflowEnv,
    emu: RunComfyEmulator,
    in_background: Callable[[Callable[[], None]], None],
    job_seconds: dict[str, float],
    held: bool,
    what_the_retry_does: str,
) -> None:
    """A retry re-attaches to a running job, or pays nothing and returns the outputs of a finished one."""
    emu.set_config(**job_seconds)
    emu.add_fault("status", "http", times=4, status=503)
    if held:
        emu.add_rule(hold=True)
        # The first try's four failed polls, then the retry's own look at the job: released after it.
        in_background(lambda: release_after(emu, status_reads=5))
    run = run_edit(airflow_env, emu, "it_retry", max_retries=0)
    run.assert_states(edit="success")
    assert what_the_retry_does in run.output
    assert emu.journal.count("submit") == 1
    assert run.xcom("edit")["request_id"] == emu.journal.of("submit")[0].request_id


def test_a_retry_after_the_job_failed_submits_anew(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    emu.add_rule(prompt_contains="flaky", fail_message="worker lost")
    run = run_edit(airflow_env, emu, "it_retry", "flaky")
    assert run.task_states() == {"edit": "failed"}
    assert "submitting anew" in run.output
    assert emu.journal.count("submit") == 2


# -- never pays twice ------------------------------------------------------------------------------


def test_a_retry_after_a_timeout_reattaches_to_a_job_whose_outcome_is_not_written_yet(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    """The first try times out while the job runs; the retry finds it finished, but /result still
    says "completed" (twice): it waits on that job instead of paying for a new one."""
    emu.set_config(queue_seconds=0, run_seconds=2.5)
    emu.add_fault("result", "not_written", times=2)
    run = run_edit(airflow_env, emu, "it_retry_after_timeout")
    run.assert_states(edit="success")
    assert "did not finish within timeout=1 s" in run.output  # the first try timed out
    assert "Re-attaching to RunComfy request" in run.output
    assert emu.journal.count("submit") == 1
    (submit,) = emu.journal.of("submit")
    assert run.xcom("edit")["request_id"] == submit.request_id
    assert emu.journal.count("result") >= 3  # both "completed" answers were read


def test_the_sensor_pokes_again_while_the_outcome_is_not_written(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    from airflow_provider_runcomfy.client import RunComfyClient

    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        request_id = client.submit(
            "blackforestlabs/flux-1-kontext/pro/edit",
            {"prompt": "p", "image_url": emu.sample_url()},
        ).request_id
        client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 30)
    emu.add_fault("result", "not_written", times=2)
    run = airflow_env.dags_test("it_sense", conf={"request_id": request_id}, env=conn_env(emu))
    run.assert_states(wait="success")
    assert run.xcom("wait")["request_id"] == request_id
    assert run.xcom("wait")["status"] == "succeeded"


def test_a_submit_answered_with_an_unreadable_body_fails_without_retry(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    """RunComfy created the job but its answer cannot be read: no retry may pay for it again."""
    emu.add_fault("submit", "bad_body")
    run = run_edit(airflow_env, emu, "it_retries")
    assert_failed_with(
        run,
        "the task is not retried",
        "sent to blackforestlabs/flux-1-kontext/pro/edit at ",
        "input fingerprint ",
        "RunComfy dashboard",
    )
    assert emu.journal.count("submit") == 1  # retries=2, and not one was used


def test_a_request_id_that_cannot_be_recorded_cancels_the_job_and_fails_without_retry(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    """The submit was paid, but the store refuses its id: a retry could not find the job, so none runs."""
    emu.set_config(queue_seconds=30)
    run = run_edit(airflow_env, emu, "it_store_fails")
    (submit,) = emu.journal.of("submit")  # retries=2, and not one was used
    assert_failed_with(
        run,
        f"RunComfy request {submit.request_id} was submitted",
        "could not be recorded",
        "will not be billed",
        "not retried",
    )
    job = emu.job(str(submit.request_id))
    assert job is not None and job.phase == "cancelled"
