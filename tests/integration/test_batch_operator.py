"""``RunComfyBatchOperator`` in real Airflow (``airflow dags test``) against the emulator.

Each test runs a DAG of ``dags/it_batch.py`` with its inputs as params, then checks what
a user sees -- task state, return value, ``manifest.jsonl``, the copies -- and what was
paid for, from the emulator's journal.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.storage import safe_segment

from .conftest import AirflowEnv, DagRun

pytestmark = pytest.mark.integration

MODEL = "google/nano-banana/edit"


def item(n: int, tag: str = "ok") -> dict[str, Any]:
    """A valid input whose prompt names the item (the journal finds its submits by it) and a tag (rules)."""
    return {"prompt": f"item {n:03d} {tag}", "image_urls": [f"https://images.example.com/batch/{n:03d}.png"]}


def run_batch(env: AirflowEnv, emu: RunComfyEmulator, dag_id: str, inputs: Any, out: Path) -> DagRun:
    conf = {"inputs": inputs, "output_dir": f"file://{out}"}
    return env.dags_test(dag_id, conf=conf, env=emu.airflow_conn_env())


def items(count: int) -> list[dict[str, Any]]:
    return [item(n) for n in range(count)]


def run_two_of_five_failing(
    env: AirflowEnv, emu: RunComfyEmulator, out: Path, tag: str, message: str
) -> DagRun:
    """``it_batch`` over five items, of which the emulator fails items 1 and 3 (tagged ``tag``) with ``message``."""
    emu.add_rule(prompt_contains=tag, fail_message=message)
    return run_batch(env, emu, "it_batch", [item(0), item(1, tag), item(2), item(3, tag), item(4)], out)


def task_folder(out: Path, run: DagRun) -> Path:
    return out / run.dag_id / safe_segment(run.run_id) / "batch" / "-1"


def manifest(out: Path, run: DagRun) -> list[dict[str, Any]]:
    text = (task_folder(out, run) / "manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def submits_per_item(emu: RunComfyEmulator) -> Counter[str]:
    """How many accepted submits each item's prompt had (a second one would be a second payment)."""
    return Counter(
        e.json["prompt"].split(" ")[1]
        for e in emu.journal.of("submit")
        if e.status_code == 200 and isinstance(e.json, dict)
    )


def test_a_batch_runs_every_item_once_and_keeps_every_output(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = items(7)
    run = run_batch(airflow_env, emu, "it_batch", inputs, tmp_path)

    run.assert_states(batch="success")
    result = run.xcom("batch")
    assert result["total"] == 7 and result["succeeded"] == 7
    assert result["failed"] == result["invalid"] == result["unknown"] == result["cancelled"] == 0
    assert result["cost_usd"] == pytest.approx(sum(j.cost_usd for j in emu.jobs))
    records = manifest(tmp_path, run)
    assert result["manifest"] == f"file://{task_folder(tmp_path, run) / 'manifest.jsonl'}"
    assert [r["index"] for r in records] == list(range(7))
    assert [r["input"] for r in records] == inputs
    for record in records:
        assert record["status"] == "succeeded" and record["error"] is None
        (stored,) = record["stored"]
        path = Path(stored["uri"].removeprefix("file://"))
        assert hashlib.sha256(path.read_bytes()).hexdigest() == stored["sha256"]
        assert record["outputs"] == [stored["source_url"]]
        assert record["cost_usd"] == pytest.approx(emu.job(record["request_id"]).cost_usd)
    assert sorted(submits_per_item(emu).values()) == [1] * 7
    # The metadata DB holds one small return value, no per-item rows.
    assert len(json.dumps(result)) < 600


def test_failed_items_are_listed_and_the_task_succeeds_when_some_succeeded(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = run_two_of_five_failing(airflow_env, emu, tmp_path, "bad", "the model refused this picture")

    run.assert_states(batch="success")
    result = run.xcom("batch")
    assert (result["total"], result["succeeded"], result["failed"]) == (5, 3, 2)
    records = manifest(tmp_path, run)
    assert [r["status"] for r in records] == ["succeeded", "failed", "succeeded", "failed", "succeeded"]
    for failed in (records[1], records[3]):
        assert "the model refused this picture" in failed["error"]
        assert failed["request_id"] and failed["stored"] == [] and failed["outputs"] == []
    assert "Item 1 (" in run.output and "the model refused this picture" in run.output


def test_max_failed_items_fails_the_task_after_writing_the_manifest(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(prompt_contains="bad", fail_message="no")
    run = run_batch(airflow_env, emu, "it_batch_strict", [item(0), item(1, "bad"), item(2)], tmp_path)

    run.assert_states(batch="failed")
    assert "more than max_failed_items=0" in run.output
    assert [r["status"] for r in manifest(tmp_path, run)] == ["succeeded", "failed", "succeeded"]
    assert emu.journal.count("submit") == 3  # AirflowFailException: no retry pays again


def test_invalid_items_are_reported_and_never_submitted(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    bad_ratio = {**item(1), "aspect_ratio": "7:3"}
    inputs = [item(0), bad_ratio, "not an input", item(3)]
    run = run_batch(airflow_env, emu, "it_batch", inputs, tmp_path)

    run.assert_states(batch="success")
    result = run.xcom("batch")
    assert (result["succeeded"], result["invalid"]) == (2, 2)
    records = manifest(tmp_path, run)
    assert [r["status"] for r in records] == ["succeeded", "invalid", "invalid", "succeeded"]
    assert "aspect_ratio" in records[1]["error"] and records[1]["request_id"] is None
    assert "JSON object" in records[2]["error"]
    assert emu.journal.count("submit") == 2


def test_max_invalid_items_fails_before_anything_is_paid(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = run_batch(airflow_env, emu, "it_batch_strict", [item(0), {**item(1), "num_images": 9}], tmp_path)

    run.assert_states(batch="failed")
    assert "nothing was submitted" in run.output
    assert emu.journal.count("submit") == 0
    assert [r["status"] for r in manifest(tmp_path, run)] == ["not_submitted", "invalid"]


def test_a_retry_after_the_worker_died_resumes_without_paying_twice(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    run = run_batch(airflow_env, emu, "it_batch_worker_dies", items(8), tmp_path)

    run.assert_states(batch="success")
    assert "simulated worker death after 4 submits" in run.output  # the first try did die
    assert submits_per_item(emu) == Counter({f"{n:03d}": 1 for n in range(8)})
    records = manifest(tmp_path, run)
    assert [r["status"] for r in records] == ["succeeded"] * 8
    # The first try's jobs were re-attached: each manifest line names the one job of its item.
    assert {r["request_id"] for r in records} == {j.request_id for j in emu.jobs}
    assert len({s["uri"] for r in records for s in r["stored"]}) == 8


def clear_and_rerun(
    env: AirflowEnv, emu: RunComfyEmulator, run: DagRun, params: dict[str, Any] | None = None
) -> DagRun:
    """Clear the batch task of ``run`` (a new try, as in the UI) and run it again in the same DAG run."""
    cleared = env.airflow("tasks", "clear", run.dag_id, "-y", env=emu.airflow_conn_env())
    assert cleared.returncode == 0, cleared.stdout[-2000:] + cleared.stderr[-2000:]
    args = ["tasks", "test", run.dag_id, "batch", run.run_id]
    if params is not None:
        args += ["-t", json.dumps(params)]
    again = env.airflow(*args, env=emu.airflow_conn_env())
    return DagRun(run.dag_id, again.returncode, again.stdout + again.stderr, env.db)


def test_clearing_after_a_partial_failure_pays_only_for_the_failed_items(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    first = run_two_of_five_failing(airflow_env, emu, tmp_path, "flaky", "a passing hiccup")
    first.assert_states(batch="success")
    assert emu.journal.count("submit") == 5
    first_jobs = {j.input["prompt"]: j.request_id for j in emu.jobs}
    copies = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("outputs/*.png")}
    assert len(copies) == 3

    emu.clear_rules()
    run = clear_and_rerun(airflow_env, emu, first)

    assert run.returncode == 0, run.output[-4000:]
    run.assert_states(batch="success")
    paid_again = [e.json["prompt"] for e in emu.journal.of("submit")[5:]]
    assert sorted(paid_again) == ["item 001 flaky", "item 003 flaky"]
    records = manifest(tmp_path, run)
    assert [r["status"] for r in records] == ["succeeded"] * 5
    for record in records:
        if "flaky" not in record["input"]["prompt"]:
            assert record["request_id"] == first_jobs[record["input"]["prompt"]]
    # The outputs kept by the first try were not downloaded again.
    for name, mtime in copies.items():
        assert next(tmp_path.rglob(f"outputs/{name}")).stat().st_mtime_ns == mtime
    assert emu.journal.count("file") == 5


def test_changed_inputs_of_a_cleared_task_are_new_items_only(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    inputs = items(4)
    lines = tmp_path / "inputs.jsonl"  # inputs from a JSON-lines file: they never pass through XCom
    lines.write_text("".join(json.dumps(i) + "\n" for i in inputs))
    first = run_batch(airflow_env, emu, "it_batch", f"file://{lines}", tmp_path)
    first.assert_states(batch="success")
    assert emu.journal.count("submit") == 4

    # Reordered, one changed: the three unchanged items are not paid for again.
    changed = [inputs[3], inputs[1], item(9, "new"), inputs[0]]
    lines.write_text("".join(json.dumps(i) + "\n" for i in changed))
    run = clear_and_rerun(airflow_env, emu, first)

    assert run.returncode == 0, run.output[-3000:]
    assert [e.json["prompt"] for e in emu.journal.of("submit")[4:]] == ["item 009 new"]
    assert [r["input"] for r in manifest(tmp_path, run)] == changed
    assert [r["status"] for r in manifest(tmp_path, run)] == ["succeeded"] * 4


def test_the_in_flight_bound_holds_at_runcomfy(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(model_id=MODEL, queue_seconds=0.3, run_seconds=0.7)
    run = run_batch(airflow_env, emu, "it_batch", items(12), tmp_path)

    run.assert_states(batch="success")
    jobs = emu.jobs
    assert len(jobs) == 12
    moments = sorted([(j.created_at, 1) for j in jobs] + [(j.finished_at, -1) for j in jobs])
    held = peak = 0
    for _, change in moments:
        held += change
        peak = max(peak, held)
    assert peak == 3  # max_in_flight=3: used, never exceeded


def test_a_storm_of_429s_slows_submits_down_and_pays_each_item_once(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_fault("submit", "http", status=429, times=15, retry_after=0.1)
    run = run_batch(airflow_env, emu, "it_batch_wide", items(10), tmp_path)

    run.assert_states(batch="success")
    statuses = Counter(e.status_code for e in emu.journal.of("submit"))
    assert statuses == Counter({429: 15, 200: 10})
    assert submits_per_item(emu) == Counter({f"{n:03d}": 1 for n in range(10)})
    assert run.xcom("batch")["succeeded"] == 10


def test_the_batch_timeout_cancels_every_queued_job(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(model_id=MODEL, queue_seconds=60, run_seconds=1)
    run = run_batch(airflow_env, emu, "it_batch_timeout", items(5), tmp_path)

    run.assert_states(batch="failed")
    assert "did not finish within timeout=4" in run.output
    assert emu.journal.count("submit") == 3
    assert emu.journal.count("cancel") == 3
    assert {j.phase for j in emu.jobs} == {"cancelled"}
    records = manifest(tmp_path, run)
    assert [r["status"] for r in records] == ["cancelled"] * 3 + ["not_submitted"] * 2
    # The progress line follows RunComfy's queue while the jobs wait in it.
    assert "Batch progress: 0/5 done" in run.output and "first waiting job at queue position 0" in run.output


def test_the_blocking_mode_runs_the_same_batch_in_the_worker(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(prompt_contains="bad", fail_message="no")
    run = run_batch(
        airflow_env, emu, "it_batch_blocking", [item(0), item(1, "bad"), item(2), item(3)], tmp_path
    )

    run.assert_states(batch="success")
    assert [r["status"] for r in manifest(tmp_path, run)] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert "Deferring" not in run.output and emu.journal.count("submit") == 4


def test_jobs_due_before_a_deferral_could_return_are_waited_for_in_place_longer_ones_deferred(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    # Jobs of 0.3 s, three at a time: due long before the trigger's hold (10 s on Airflow's
    # defaults) would let a deferred worker come back, so the worker waits for them itself.
    emu.add_rule(prompt_contains="short", run_seconds=0.3)
    short = run_batch(airflow_env, emu, "it_batch", [item(n, "short") for n in range(9)], tmp_path / "short")

    short.assert_states(batch="success")
    assert "waiting in this worker rather than deferring" in short.output
    assert "Pausing task as DEFERRED" not in short.output
    assert sorted(submits_per_item(emu).values()) == [1] * 9

    # With a 3 s hold (intervals of 0), jobs of 4 s are deferred for.
    emu.add_rule(prompt_contains="long", run_seconds=4)
    conf = {"inputs": [item(n, "long") for n in range(100, 103)], "output_dir": f"file://{tmp_path / 'long'}"}
    quick_hold = {
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "0",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0",
    }
    long = airflow_env.dags_test("it_batch", conf=conf, env={**emu.airflow_conn_env(), **quick_hold})

    long.assert_states(batch="success")
    # Their run time not known yet, the first part may wait in place a moment; that wait comes
    # back empty (jobs of 4 s, a bound of ~3 s) and the part defers.
    assert "Pausing task as DEFERRED" in long.output
    assert sorted(submits_per_item(emu).values()) == [1] * 12


def test_outputs_are_copied_while_the_next_jobs_are_waited_for_and_submitted(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    # Jobs of 0.3 s, three at a time, whose output files take 2.5 s each to arrive: the copies of
    # one round must not hold up the next rounds (they go on while the worker waits and submits).
    delay = 2.5
    emu.add_rule(prompt_contains="slowcopy", run_seconds=0.3)
    emu.add_fault("file", "delay", times=None, seconds=delay)
    run = run_batch(airflow_env, emu, "it_batch", [item(n, "slowcopy") for n in range(9)], tmp_path)

    run.assert_states(batch="success")
    assert sorted(submits_per_item(emu).values()) == [1] * 9
    assert [row["status"] for row in manifest(tmp_path, run)] == ["succeeded"] * 9
    assert len(list((task_folder(tmp_path, run) / "outputs").iterdir())) == 9
    files = [e.at for e in emu.journal.of("file")]
    submits = [e.at for e in emu.journal.of("submit") if e.status_code == 200]
    # A submit arrived while an earlier round's output was still on its way (a copy blocking the
    # worker would leave no submit between a file request and its answer).
    assert any(f + 0.2 < s < f + delay - 0.2 for f in files for s in submits), (files, submits)
    assert "items still copying" in run.output


def test_out_of_balance_stops_submitting_at_once_and_keeps_what_is_in_flight(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(model_id=MODEL, queue_seconds=0.5, run_seconds=1)
    price = emu.jobs[0].cost_usd if emu.jobs else None
    assert price is None
    run0 = run_batch(airflow_env, emu, "it_batch", [item(99)], tmp_path / "probe")
    run0.assert_states(batch="success")
    price = emu.jobs[0].cost_usd
    emu.reset()
    emu.add_rule(model_id=MODEL, queue_seconds=0.5, run_seconds=1)
    emu.set_config(balance_usd=round(price * 3 + price / 2, 6))  # enough for three jobs

    run = run_batch(airflow_env, emu, "it_batch_wide", items(20), tmp_path)

    run.assert_states(batch="failed")
    assert "out of balance" in run.output
    submits = emu.journal.of("submit")
    assert sum(e.status_code == 200 for e in submits) == 3
    # Only the first refill submitted (the attempts already under way when the refusal came);
    # no refill after it, though its jobs finished and freed room.
    assert len(submits) <= 10 and max(e.at for e in submits) < min(j.finished_at for j in emu.jobs)
    records = manifest(tmp_path, run)
    statuses = Counter(r["status"] for r in records)
    assert statuses == Counter({"succeeded": 3, "not_submitted": 17})  # the jobs in flight were kept
    assert all(r["stored"] for r in records if r["status"] == "succeeded")
    assert "balance" in next(r for r in records if r["status"] == "not_submitted")["error"]


def test_a_damaged_ledger_stops_the_cleared_task_and_reconcile_resumes_without_paying(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    first = run_batch(airflow_env, emu, "it_batch_damaged", items(4), tmp_path)
    first.assert_states(batch="success")
    kept = sorted(tmp_path.rglob("outputs/*.png"))
    assert len(kept) == 4
    # What a host crash leaves of a file whose data never reached the disk.
    (task_folder(tmp_path, first) / "_ledger" / "checkpoint.jsonl").write_bytes(b"")

    stopped = clear_and_rerun(airflow_env, emu, first)
    assert "checkpoint.jsonl is empty (0 bytes)" in stopped.output, stopped.output[-4000:]
    assert "on_damaged_ledger='reconcile'" in stopped.output
    assert emu.journal.count("submit") == 4

    cleared = airflow_env.airflow("tasks", "clear", first.dag_id, "-y", env=emu.airflow_conn_env())
    assert cleared.returncode == 0
    again = airflow_env.airflow(
        "tasks",
        "test",
        first.dag_id,
        "batch",
        first.run_id,
        env={**emu.airflow_conn_env(), "IT_ON_DAMAGED_LEDGER": "reconcile"},
    )
    output = again.stdout + again.stderr
    assert "Ledger rebuilt: 4 succeeded" in output, output[-4000:]
    assert emu.journal.count("submit") == 4  # nothing paid again
    assert [r["status"] for r in manifest(tmp_path, first)] == ["succeeded"] * 4
    assert all(p.exists() for p in kept)


def test_an_output_dir_in_memory_is_refused_before_anything_is_paid(
    airflow_env: AirflowEnv, emu: RunComfyEmulator
) -> None:
    run = airflow_env.dags_test(
        "it_batch", conf={"inputs": items(2), "output_dir": "memory://it-batch"}, env=emu.airflow_conn_env()
    )
    run.assert_states(batch="failed")
    assert "kept in memory only" in run.output, run.output[-4000:]
    assert emu.journal.count("submit") == 0
