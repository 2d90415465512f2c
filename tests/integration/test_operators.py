"""The operators in real Airflow (``airflow dags test``) talking real HTTP to the emulator.

Each test reads like the user's story and asserts on what a user sees: the
task's state, its XComs, its log, and what RunComfy (the emulator) received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

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
    assert run.task_states() == {"edit": "failed"}, run.output[-3000:]
    for phrase in phrases:
        assert phrase in run.output, f"{phrase!r} not in the task log:\n{run.output[-3000:]}"


@pytest.mark.parametrize("dag_id", sorted(EXAMPLES))
def test_every_example_dag_runs_green_unchanged(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator, dag_id: str
) -> None:
    run = airflow_env.dags_test(dag_id, env=conn_env(runcomfy_emulator))
    assert run.task_states() == EXAMPLES[dag_id], run.output[-4000:]
    assert run.state == "success"


def test_a_deferred_edit_pushes_the_request_id_then_the_outputs(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "Pausing task as DEFERRED" in run.output  # it waited in the trigger, not the worker
    (submit,) = runcomfy_emulator.journal.of("submit")
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
        "image_url": flux_conf(runcomfy_emulator)["image_url"],
        "aspect_ratio": "1:1",
    }
    assert runcomfy_emulator.token not in run.output


def test_blocking_mode_polls_in_the_worker_and_logs_each_state(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    run = airflow_env.dags_test(
        "it_blocking", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "DEFERRED" not in run.output
    assert "is in_queue (queue position 0)" in run.output
    assert "is in_progress" in run.output
    assert run.xcom("edit")["status"] == "succeeded"


def test_a_generic_model_returns_its_outputs(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(model_id="acme/video/generate", output_kind="videos", num_outputs=2)
    conf = {"model_id": "acme/video/generate", "input": {"prompt": "a cat", "duration": 5}}
    run = airflow_env.dags_test("it_generic_model", conf=conf, env=conn_env(runcomfy_emulator))
    assert run.task_states() == {"run": "success"}, run.output[-4000:]
    result = run.xcom("run")
    assert len(result["outputs"]) == 2
    assert result["outputs"] == result["output"]["videos"]


def test_bad_rendered_inputs_fail_before_any_request(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    conf = {**flux_conf(runcomfy_emulator), "aspect_ratio": "square"}
    run = airflow_env.dags_test("it_deferred", conf=conf, env=conn_env(runcomfy_emulator))
    assert_failed_with(run, "aspect_ratio: 'square' is not one of 21:9")
    assert runcomfy_emulator.journal.count() == 0


def test_a_failed_job_fails_the_task_with_runcomfys_reason(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="forbidden", fail_message="content policy violation")
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator, "forbidden"), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(run, "failed: content policy violation", "JobFailedError")


def test_a_bad_token_fails_at_once_and_names_the_connection(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    run = airflow_env.dags_test(
        "it_retry", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator, token="revoked-token")
    )
    assert_failed_with(run, "error 400004", "Airflow connection 'runcomfy_default'")
    assert runcomfy_emulator.journal.count("submit") == 1  # AirflowFailException: the retry is skipped


def test_no_balance_says_so_plainly(airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.set_config(balance_usd=0.0)
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(run, "no balance left", "top up")


def test_a_job_cancelled_elsewhere_fails_the_task(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator, in_background: Callable[..., None]
) -> None:
    runcomfy_emulator.set_config(queue_seconds=20)

    def cancel_it() -> None:
        from airflow_provider_runcomfy.client import RunComfyClient

        with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
            client.cancel(wait_for_submit(runcomfy_emulator))

    in_background(cancel_it)
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(run, "was cancelled before it ran", "JobCancelledError")


def test_an_expired_request_fails_with_what_to_do(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator, in_background: Callable[..., None]
) -> None:
    runcomfy_emulator.set_config(queue_seconds=20)
    in_background(lambda: runcomfy_emulator.expire(wait_for_submit(runcomfy_emulator)))
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(run, "error 404001", "expired")


@pytest.mark.parametrize("dag_id", ["it_timeout", "it_blocking_timeout"])
def test_a_timeout_cancels_the_job_then_fails_naming_the_timeout(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator, dag_id: str
) -> None:
    runcomfy_emulator.set_config(queue_seconds=60)
    run = airflow_env.dags_test(dag_id, conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator))
    assert_failed_with(run, "did not finish within timeout=2 s", "will not be billed")
    (cancel,) = runcomfy_emulator.journal.of("cancel")
    assert cancel.request_id == runcomfy_emulator.journal.of("submit")[0].request_id
    assert runcomfy_emulator.job(cancel.request_id).phase == "cancelled"  # type: ignore[union-attr]


def test_a_timeout_on_a_running_job_says_it_will_be_billed(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=60)
    run = airflow_env.dags_test(
        "it_timeout", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(run, "did not finish within timeout=2 s", "RunComfy will finish and bill it")


def test_transient_poll_failures_are_tolerated(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_fault("status", "http", times=2, status=503)
    runcomfy_emulator.add_fault("status", "http", times=1, status=429, retry_after=0)
    run = airflow_env.dags_test(
        "it_deferred", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator, max_retries=0)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "tolerated in a row" in run.output


def test_a_retried_task_reattaches_to_its_running_job_and_submits_nothing(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    """The first try loses RunComfy for longer than tolerated and fails; the retry finds its job still running."""
    runcomfy_emulator.set_config(queue_seconds=0.5, run_seconds=6)
    runcomfy_emulator.add_fault("status", "http", times=4, status=503)
    run = airflow_env.dags_test(
        "it_retry", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator, max_retries=0)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "Re-attaching to RunComfy request" in run.output
    assert runcomfy_emulator.journal.count("submit") == 1
    assert run.xcom("edit")["request_id"] == runcomfy_emulator.journal.of("submit")[0].request_id


def test_a_retry_after_the_job_succeeded_reuses_its_outputs(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    """The first try fails after its job finished; the retry pays nothing and returns the same outputs."""
    runcomfy_emulator.set_config(queue_seconds=0.1, run_seconds=0.2)
    # Four failed polls, 0.2 s apart, end the first try; the job finishes meanwhile.
    runcomfy_emulator.add_fault("status", "http", times=4, status=503)
    run = airflow_env.dags_test(
        "it_retry", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator, max_retries=0)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "Reusing the outputs of RunComfy request" in run.output
    assert runcomfy_emulator.journal.count("submit") == 1


def test_a_retry_after_the_job_failed_submits_anew(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(prompt_contains="flaky", fail_message="worker lost")
    run = airflow_env.dags_test(
        "it_retry", conf=flux_conf(runcomfy_emulator, "flaky"), env=conn_env(runcomfy_emulator)
    )
    assert run.task_states() == {"edit": "failed"}
    assert "submitting anew" in run.output
    assert runcomfy_emulator.journal.count("submit") == 2


# -- never pays twice ------------------------------------------------------------------------------


def test_a_retry_after_a_timeout_reattaches_to_a_job_whose_outcome_is_not_written_yet(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    """The first try times out while the job runs; the retry finds it finished, but /result still
    says "completed" (twice): it waits on that job instead of paying for a new one."""
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=2.5)
    runcomfy_emulator.add_fault("result", "not_written", times=2)
    run = airflow_env.dags_test(
        "it_retry_after_timeout", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert run.task_states() == {"edit": "success"}, run.output[-4000:]
    assert "did not finish within timeout=1 s" in run.output  # the first try timed out
    assert "Re-attaching to RunComfy request" in run.output
    assert runcomfy_emulator.journal.count("submit") == 1
    (submit,) = runcomfy_emulator.journal.of("submit")
    assert run.xcom("edit")["request_id"] == submit.request_id
    assert runcomfy_emulator.journal.count("result") >= 3  # both "completed" answers were read


def test_the_sensor_pokes_again_while_the_outcome_is_not_written(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    from airflow_provider_runcomfy.client import RunComfyClient

    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        request_id = client.submit(
            "blackforestlabs/flux-1-kontext/pro/edit",
            {"prompt": "p", "image_url": runcomfy_emulator.sample_url()},
        ).request_id
        client.wait_for_result(request_id, poll_interval=0.1, deadline=time.time() + 30)
    runcomfy_emulator.add_fault("result", "not_written", times=2)
    run = airflow_env.dags_test("it_sense", conf={"request_id": request_id}, env=conn_env(runcomfy_emulator))
    assert run.task_states() == {"wait": "success"}, run.output[-4000:]
    assert run.xcom("wait")["request_id"] == request_id
    assert run.xcom("wait")["status"] == "succeeded"


def test_a_submit_answered_with_an_unreadable_body_fails_without_retry(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    """RunComfy created the job but its answer cannot be read: no retry may pay for it again."""
    runcomfy_emulator.add_fault("submit", "bad_body")
    run = airflow_env.dags_test(
        "it_retries", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    assert_failed_with(
        run,
        "the task is not retried",
        "sent to blackforestlabs/flux-1-kontext/pro/edit at ",
        "input fingerprint ",
        "RunComfy dashboard",
    )
    assert runcomfy_emulator.journal.count("submit") == 1  # retries=2, and not one was used


def test_a_request_id_that_cannot_be_recorded_cancels_the_job_and_fails_without_retry(
    airflow_env: AirflowEnv, runcomfy_emulator: RunComfyEmulator
) -> None:
    """The submit was paid, but the store refuses its id: a retry could not find the job, so none runs."""
    runcomfy_emulator.set_config(queue_seconds=30)
    run = airflow_env.dags_test(
        "it_store_fails", conf=flux_conf(runcomfy_emulator), env=conn_env(runcomfy_emulator)
    )
    (submit,) = runcomfy_emulator.journal.of("submit")  # retries=2, and not one was used
    assert_failed_with(
        run,
        f"RunComfy request {submit.request_id} was submitted",
        "could not be recorded",
        "will not be billed",
        "not retried",
    )
    job = runcomfy_emulator.job(str(submit.request_id))
    assert job is not None and job.phase == "cancelled"
