"""OpenLineage: the input pictures, the kept copies and the RunComfy request id of a task run.

Two levels: the OpenLineage provider's own ``ExtractorManager`` (what its listener calls)
on a real operator that concluded with a real outcome, and a real ``airflow dags test``
against the emulator with the provider's listener (it builds its events in a forked
process) writing them to a file, read back as a lineage backend would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers_lineage import extract, names
from airflow.utils.state import TaskInstanceState
from openlineage.client.serde import Serde

from airflow_provider_runcomfy.client.outcome import Outcome, OutcomeKind
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.operators.lineage import LINEAGE_SOURCE, dataset_name
from airflow_provider_runcomfy.operators.runcomfy import (
    FluxKontextProEditOperator,
    NanoBananaEditOperator,
    RunComfyModelOperator,
)


def test_dataset_names_follow_openlineage_naming_and_drop_signatures() -> None:
    assert dataset_name("https://cdn.example.com/in/a.png?X-Amz-Signature=abc") == (
        "https://cdn.example.com",
        "/in/a.png",
    )
    assert dataset_name("s3://bucket/prefix/a.png") == ("s3://bucket", "prefix/a.png")
    assert dataset_name("gs://b/k.jpg") == ("gs://b", "k.jpg")
    assert dataset_name("file:///data/out/a.png") == ("file", "/data/out/a.png")
    assert dataset_name("/data/in/a.png") == ("file", "/data/in/a.png")
    assert dataset_name("data:image/png;base64,AAAA") is None
    assert dataset_name("{{ var.value.base }}/in.png") is None  # never rendered: not a dataset


def test_a_finished_edit_reports_its_input_its_outputs_and_its_request() -> None:
    task = FluxKontextProEditOperator(
        task_id="edit", prompt="p", image_url="https://images.example.com/in.png?sig=1"
    )
    outcome = Outcome(
        OutcomeKind.SUCCEEDED,
        "req-1",
        model_id=task.model_id,
        outputs=("https://cdn.runcomfy.net/o/1.png?token=t",),
        cost_usd=0.04,
    )
    task.conclude({}, outcome)  # how every path of the operator ends (blocking, resumed, re-attached)
    lineage = extract(task)
    assert names(lineage.inputs) == [("https://images.example.com", "/in.png")]
    assert names(lineage.outputs) == [("https://cdn.runcomfy.net", "/o/1.png")]  # no copies kept: the URL
    query = lineage.run_facets["externalQuery"]
    assert (query.externalQueryId, query.source) == ("req-1", LINEAGE_SOURCE)
    facet = lineage.run_facets["runcomfy"]
    assert (facet.request_id, facet.model_id, facet.status, facet.cost_usd) == (
        "req-1",
        "blackforestlabs/flux-1-kontext/pro/edit",
        "succeeded",
        0.04,
    )
    # What the listener sends must serialise (OpenLineage's own serialiser).
    sent = json.loads(Serde.to_json(lineage.run_facets["runcomfy"]))
    assert sent["request_id"] == "req-1" and sent["_producer"] is not None


def test_every_input_picture_of_an_edit_is_an_input_dataset() -> None:
    task = NanoBananaEditOperator(
        task_id="enrich", prompt="p", image_urls=["https://a/1.png", "s3://in/2.png"]
    )
    task.conclude({}, Outcome(OutcomeKind.SUCCEEDED, "r", outputs=("https://cdn/o.png",)))
    lineage = extract(task)
    assert names(lineage.inputs) == [("https://a", "/1.png"), ("s3://in", "2.png")]
    assert names(lineage.outputs) == [("https://cdn", "/o.png")]


def test_a_failed_task_reports_its_inputs_and_the_request_it_paid_for() -> None:
    task = RunComfyModelOperator(
        task_id="any", model_id="some/other/model", input={"image_url": "https://a/in.png", "prompt": "p"}
    )
    with pytest.raises(Exception, match="nsfw"):
        task.conclude({}, Outcome(OutcomeKind.FAILED, "req-9", message="RunComfy request req-9 failed: nsfw"))
    lineage = extract(task, TaskInstanceState.FAILED)
    assert names(lineage.inputs) == [("https://a", "/in.png")] and lineage.outputs == []
    assert lineage.run_facets["externalQuery"].externalQueryId == "req-9"
    assert lineage.run_facets["runcomfy"].status == "failed"


def test_a_task_that_failed_before_submitting_reports_only_its_inputs() -> None:
    task = FluxKontextProEditOperator(task_id="edit", prompt="p", image_url="https://a/in.png")
    lineage = extract(task, TaskInstanceState.FAILED)
    assert names(lineage.inputs) == [("https://a", "/in.png")]
    assert lineage.outputs == [] and "externalQuery" not in lineage.run_facets


# -- the real listener -----------------------------------------------------------------------------

DAG = textwrap.dedent(
    """
    import pendulum
    from airflow.sdk import DAG
    from airflow_provider_runcomfy.operators.runcomfy import FluxKontextProEditOperator

    with DAG("lineage_edit", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
        FluxKontextProEditOperator(
            task_id="edit",
            prompt="make it blue",
            image_url="{{ var.value.emulator }}/samples/portrait.png",
            output_dir="{{ var.value.output_dir }}",
            poll_interval=0.2,
        )
    """
)


@pytest.mark.integration
def test_the_openlineage_listener_emits_the_lineage_of_a_real_run(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    """``airflow dags test`` with the OpenLineage provider's listener and its file transport."""
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "lineage_edit.py").write_text(DAG)
    events = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "runcomfy-test",
        "AIRFLOW_VAR_EMULATOR": runcomfy_emulator.base_url,
        "AIRFLOW_VAR_OUTPUT_DIR": out.as_uri(),
        **runcomfy_emulator.airflow_conn_env(),
    }
    airflow = [sys.executable, "-m", "airflow"]
    for args in (["db", "migrate"], ["dags", "test", "lineage_edit"]):
        done = subprocess.run(
            [*airflow, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    sent = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    complete = [e for e in sent if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".edit")]
    assert len(complete) == 1, [(e["eventType"], e["job"]["name"]) for e in sent]
    event = complete[0]
    [request] = runcomfy_emulator.jobs
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        (runcomfy_emulator.base_url, "/samples/portrait.png")
    ]
    [output] = event["outputs"]
    assert output["namespace"] == "file" and output["name"].startswith(str(out))
    assert output["name"].endswith(f"{request.request_id}_0.png") and Path(output["name"]).is_file()
    facets = event["run"]["facets"]
    assert facets["externalQuery"]["externalQueryId"] == request.request_id
    assert facets["runcomfy"]["request_id"] == request.request_id
    assert facets["runcomfy"]["model_id"] == "blackforestlabs/flux-1-kontext/pro/edit"
