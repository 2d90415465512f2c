"""What every supported Airflow (3.0 to 3.3) must do alike, in real Airflow against the emulator.

``scripts/compat`` runs this file, with the version-dependent scenarios of the other
integration files, in a fresh environment per Airflow release; the main suite runs it on 3.3.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from airflow_provider_runcomfy.compat import HAS_TASK_STATE_STORE, VariableStateStore
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.operators._submit import STATE_KEY

from .conftest import AirflowEnv

pytestmark = pytest.mark.integration

NANO = "google/nano-banana/edit"


def test_a_blocking_nano_edit_polls_in_the_worker_and_returns_every_image(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    conf = {"prompt": "make it blue", "image_urls": [emu.sample_url("street")]}
    run = airflow_env.dags_test("it_compat_nano_blocking", conf=conf, env=emu.airflow_conn_env())
    run.assert_states(edit="success")
    result = run.xcom("edit")
    (submit,) = emu.journal.of("submit")
    assert result["request_id"] == submit.request_id and result["model_id"] == NANO
    assert result["status"] == "succeeded" and len(result["outputs"]) == 2
    assert "Deferring" not in run.output and "TaskDeferred" not in run.output


def test_a_100_item_batch_pays_each_item_once(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = [
        {"prompt": f"item {n:03d}", "image_urls": [f"https://images.example.com/batch/{n:03d}.png"]}
        for n in range(100)
    ]
    conf = {"inputs": inputs, "output_dir": f"file://{tmp_path}"}
    run = airflow_env.dags_test("it_batch_wide", conf=conf, env=emu.airflow_conn_env(), timeout=1800)
    run.assert_states(batch="success")
    result = run.xcom("batch")
    assert result["total"] == 100 and result["succeeded"] == 100
    paid = Counter(e.json["prompt"] for e in emu.journal.of("submit") if e.status_code == 200)
    assert len(paid) == 100 and set(paid.values()) == {1}
    lines = Path(result["manifest"].removeprefix("file://")).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(100))


def test_the_reattach_record_is_kept_where_this_airflow_keeps_state(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    """3.3 keeps it in ``task_state_store``; 3.0-3.2 in an Airflow Variable of the task instance.

    The first try dies right after its paid submit; the retry finds the job through the
    record, waits on it and pays nothing.
    """
    conf = {"prompt": "make it green", "image_url": emu.sample_url("portrait")}
    run = airflow_env.dags_test("it_compat_dies_after_submit", conf=conf, env=emu.airflow_conn_env())
    run.assert_states(edit="success")
    (submit,) = emu.journal.of("submit")
    assert "simulated worker death after the submit" in run.output  # the first try did die
    # The job still runs (re-attach) or has finished (its outputs reused): either way, no new submit.
    assert f"RunComfy request {submit.request_id} of an earlier try" in run.output
    name = VariableStateStore(run.dag_id, run.run_id, "edit", -1).variable_name(STATE_KEY)
    found = airflow_env.airflow("variables", "get", name)
    if HAS_TASK_STATE_STORE:
        assert found.returncode != 0, found.stdout  # no such Variable
        return
    assert found.returncode == 0, found.stdout + found.stderr
    value = json.loads(found.stdout.strip().splitlines()[-1])
    assert value["value"]["request_id"] == submit.request_id
    assert value["task_instance"] == {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "task_id": "edit",
        "map_index": -1,
    }


def test_the_token_a_task_reads_is_masked_and_never_printed(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    """Airflow registers a connection's password with its masker on every release (the
    provider adds no ``mask_secret`` of its own for it). ``dags test`` prints its debug log
    (always on 3.0, at DEBUG on 3.1-3.3), where each ``MaskSecret`` message showed the token:
    the provider's connection read keeps the value out (``compat.omit_secret_values_from_test_log``).
    """
    debug = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}
    run = airflow_env.dags_test("it_compat_token_masked", env={**emu.airflow_conn_env(), **debug})
    run.assert_states(read="success")
    assert run.xcom("read") == "[***]"  # the masker knows the token
    assert "MaskSecret" in run.output  # the debug log was printed...
    assert emu.token not in run.output  # ...without the token
