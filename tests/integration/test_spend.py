"""Spend under control, in real Airflow against the emulator: what a job cost, budgets, schema checks.

Each test reads like an ops story and asserts on what a user sees: task states, the
return value, the task log, and what RunComfy (the emulator) received and charged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import png
import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator

from .conftest import AirflowEnv, DagRun

pytestmark = pytest.mark.integration

VIDEO = "wan-ai/wan-2-2/image-to-video"
UNLISTED = "acme/unlisted/model"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def conn_env(emu: RunComfyEmulator) -> dict[str, str]:
    conn = {"conn_type": "runcomfy", "host": emu.base_url, "password": emu.token}
    return {"AIRFLOW_CONN_RUNCOMFY_DEFAULT": json.dumps(conn)}


def video_input(emu: RunComfyEmulator, **changes: Any) -> dict[str, Any]:
    return {
        "prompt": "the cat walks away",
        "image_url": emu.sample_url("portrait"),
        "duration": 10,
        **changes,
    }


def run_model(
    env: AirflowEnv, emu: RunComfyEmulator, dag_id: str, model_id: str, payload: dict[str, Any]
) -> DagRun:
    return env.dags_test(dag_id, conf={"model_id": model_id, "input": payload}, env=conn_env(emu))


def assert_in_log(run: DagRun, *phrases: str) -> None:
    """Each phrase, word for word, in the log as a reader sees it.

    Airflow 3.0's ``dags test`` prints a failed task's error through rich: colour codes
    inside it and lines wrapped at the terminal's width. Both are taken out before the
    search, on every release; the words and their order must still match.
    """
    seen = " ".join(_ANSI.sub("", run.output).split())
    for phrase in phrases:
        assert " ".join(phrase.split()) in seen, f"{phrase!r} not in the log:\n{run.output[-4000:]}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- what a job cost ------------------------------------------------------------------------------


def test_a_jobs_cost_is_in_its_return_value(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    run = run_model(airflow_env, emu, "it_spend_model", VIDEO, video_input(emu))
    run.assert_states(run="success")
    result = run.xcom("run")
    assert result["cost_usd"] == pytest.approx(0.50)  # 10 seconds at the fixture's $0.05 per second
    (job,) = emu.jobs
    assert job.cost_usd == pytest.approx(result["cost_usd"])


# -- budgets --------------------------------------------------------------------------------------


def test_a_job_over_its_budget_is_never_submitted(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    run = run_model(airflow_env, emu, "it_spend_budget", VIDEO, video_input(emu))
    run.assert_states(run="failed")
    assert emu.journal.count("submit") == 0
    assert_in_log(
        run,
        "Not submitted: a job of wan-ai/wan-2-2/image-to-video with this input costs an estimated "
        "$0.5000 (10 seconds x $0.0500 per second), over max_cost_usd=$0.3000",
    )


def test_a_job_within_its_budget_runs(airflow_env: AirflowEnv, emu: RunComfyEmulator) -> None:
    payload = video_input(emu, duration=5)
    run = run_model(airflow_env, emu, "it_spend_budget", VIDEO, payload)
    run.assert_states(run="success")
    assert run.xcom("run")["cost_usd"] == pytest.approx(0.25)
    assert_in_log(run, "Estimated price of this job of wan-ai/wan-2-2/image-to-video: $0.2500")


# -- any model's input checked before paying ------------------------------------------------------


def test_a_bad_input_of_a_model_without_typed_inputs_is_refused_before_any_submit(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    payload = video_input(emu, duration=12, sead=3)
    run = run_model(airflow_env, emu, "it_spend_model", VIDEO, payload)
    run.assert_states(run="failed")
    assert emu.journal.count("submit") == 0
    assert_in_log(
        run,
        f"Invalid input for {VIDEO}: duration: 12 is not one of 5, 10",
        "sead: is not an input of this model (did you mean seed?)",
    )


@pytest.mark.parametrize(
    ("dag_id", "state", "submits", "says"),
    [
        # The default, on_schema_unavailable="warn": a warning, and the input is submitted unchecked.
        (
            "it_spend_model",
            "success",
            1,
            (f"The input of {VIDEO} is submitted unchecked, because its model info could not be read",),
        ),
        (
            "it_spend_schema_fail",
            "failed",
            0,
            (f"Not submitted: the input of {VIDEO} cannot be checked", "on_schema_unavailable='fail'"),
        ),
    ],
    ids=["warn", "fail"],
)
def test_when_the_schema_cannot_be_read_on_schema_unavailable_decides(
    airflow_env: AirflowEnv,
    emu: RunComfyEmulator,
    dag_id: str,
    state: str,
    submits: int,
    says: tuple[str, ...],
) -> None:
    emu.add_fault("model", "http", times=None, status=503)
    run = run_model(airflow_env, emu, dag_id, VIDEO, video_input(emu))
    run.assert_states(run=state)
    assert emu.journal.count("submit") == submits
    assert_in_log(run, *says)


def test_a_model_that_publishes_no_schema_runs_unchecked_and_reports_its_cost(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = run_model(airflow_env, emu, "it_spend_model", UNLISTED, {"anything": "goes"})
    run.assert_states(run="success")
    assert_in_log(run, "RunComfy publishes no input schema for it")
    assert run.xcom("run")["cost_usd"] == pytest.approx(0.04)  # the emulator's price for unlisted models


# -- batches --------------------------------------------------------------------------------------


def run_batch(
    env: AirflowEnv,
    emu: RunComfyEmulator,
    dag_id: str,
    model_id: str,
    inputs: list[dict[str, Any]],
    output_dir: Path,
) -> DagRun:
    conf = {"model_id": model_id, "inputs": inputs, "output_dir": str(output_dir)}
    return env.dags_test(dag_id, conf=conf, env=conn_env(emu))


def manifest_of(run: DagRun) -> list[dict[str, Any]]:
    uri = run.xcom("batch", key="manifest")
    assert uri, f"no manifest pushed:\n{run.output[-4000:]}"
    path = Path(str(uri).removeprefix("file://"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_batch_checks_every_item_against_the_schema_and_records_each_cost(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = [video_input(emu, duration=d) for d in (5, 10, 7, 5)]  # 7 is not a duration
    run = run_batch(airflow_env, emu, "it_spend_batch", VIDEO, inputs, tmp_path)
    run.assert_states(batch="success")
    result = run.xcom("batch")
    assert (result["succeeded"], result["invalid"]) == (3, 1)
    assert result["cost_usd"] == pytest.approx(1.0)  # 0.25 + 0.50 + 0.25
    assert emu.journal.count("submit") == 3
    assert emu.journal.count("model") == 1  # one read of the schema for the whole batch
    rows = manifest_of(run)
    assert [row["cost_usd"] for row in rows] == [
        pytest.approx(0.25),
        pytest.approx(0.5),
        None,
        pytest.approx(0.25),
    ]
    assert "duration: 7 is not one of 5, 10" in rows[2]["error"]


def test_a_batch_over_its_budget_never_starts(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = [video_input(emu, duration=10)] * 3  # 3 x $0.50 against max_cost_usd=1.0
    run = run_batch(airflow_env, emu, "it_spend_batch_priced_budget", VIDEO, inputs, tmp_path)
    run.assert_states(batch="failed")
    assert emu.journal.count("submit") == 0
    assert_in_log(run, "Not started: the 3 item(s) to submit of this batch", "over max_cost_usd=$1.0000")


def budget_stopped_batch(env: AirflowEnv, emu: RunComfyEmulator, output_dir: Path) -> DagRun:
    """A model without a published price, $0.04 a job at the emulator, against max_cost_usd=0.03.

    Two jobs go out at once (max_in_flight=2): the first is quick, the second slow. When the
    quick one reports its cost the budget is spent, so nothing more is submitted while the
    slow one is still in flight; it is waited for and kept.
    """
    emu.add_rule(prompt_contains="quick", queue_seconds=0, run_seconds=0.2)
    emu.add_rule(prompt_contains="slow", queue_seconds=0, run_seconds=4)
    inputs = [{"prompt": "quick 0"}, {"prompt": "slow 1"}] + [{"prompt": f"later {i}"} for i in range(2, 5)]
    return run_batch(env, emu, "it_spend_batch_budget", UNLISTED, inputs, output_dir)


def test_a_batch_stops_submitting_at_its_budget_and_keeps_what_is_in_flight(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = budget_stopped_batch(airflow_env, emu, tmp_path)
    run.assert_states(batch="success")
    assert emu.journal.count("submit") == 2
    result = run.xcom("batch")
    assert result["stopped_by_budget"] is True
    assert (result["succeeded"], result["not_submitted"]) == (2, 3)  # the slow job in flight finished
    assert result["cost_usd"] == pytest.approx(0.08)
    assert_in_log(run, "Budget: max_cost_usd=$0.0300 reached: $0.0400 spent and 1 job(s) in flight")
    assert [row["status"] for row in manifest_of(run)] == ["succeeded"] * 2 + ["not_submitted"] * 3


def test_out_of_balance_mid_batch_stops_submitting_and_says_so(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.set_config(balance_usd=0.10)  # two flux edits at $0.04, not three
    inputs = [{"prompt": f"edit {i}", "image_url": emu.sample_url("portrait")} for i in range(5)]
    run = run_batch(airflow_env, emu, "it_spend_batch", FLUX, inputs, tmp_path)
    run.assert_states(batch="failed")
    assert len(emu.jobs) == 2
    assert_in_log(run, "out of balance", "400002")
    statuses = sorted(row["status"] for row in manifest_of(run))
    assert statuses == ["not_submitted"] * 3 + ["succeeded"] * 2


# -- the daily spend report -----------------------------------------------------------------------


def spend_report(env: AirflowEnv, root: Path, budget_usd: float | None) -> tuple[DagRun, dict[str, Any]]:
    conf = {"manifests_root": str(root), "since_hours": 1, "budget_usd": budget_usd}
    run = env.dags_test("runcomfy_spend_report", conf=conf)
    (report,) = (root / "_spend").glob("spend-*.json")
    return run, json.loads(report.read_text())


def test_the_daily_spend_report_sums_spend_per_model_and_fails_loudly_on_a_budget_hit(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    clean = [video_input(emu, duration=d) for d in (5, 10)]
    assert run_batch(airflow_env, emu, "it_spend_batch", VIDEO, clean, tmp_path).state == "success"

    run, report = spend_report(airflow_env, tmp_path, budget_usd=5.0)
    assert run.task_states() == {"read_manifests": "success", "write_report": "success"}, run.output[-4000:]
    assert [(m["model_id"], m["cost_usd"], m["items"]) for m in report["models"]] == [(VIDEO, 0.75, 2)]
    assert report["budget_hits"] == []
    chart = png.Reader(filename=str(next((tmp_path / "_spend").glob("spend-*.png")))).read()
    assert chart[0] > 100 and chart[1] > 30  # width, height: a real picture

    budget_stopped_batch(airflow_env, emu, tmp_path / "more")
    run, report = spend_report(airflow_env, tmp_path, budget_usd=None)
    assert run.task_states()["write_report"] == "failed", run.output[-4000:]
    assert_in_log(run, "RunComfy budget hit:", "was stopped by its max_cost_usd")
    assert {m["model_id"]: m["cost_usd"] for m in report["models"]} == {
        VIDEO: pytest.approx(0.75),
        UNLISTED: pytest.approx(0.08),
    }
    assert report["total_cost_usd"] == pytest.approx(0.83)
