"""Two executions of one batch task at once, on one ledger, in real Airflow: one owner, nothing paid twice.

What an operator sees when Airflow runs a try it believes lost beside the new one, or when a
task is run again (``airflow tasks test`` on an existing run) while it runs: here two
``airflow tasks test`` of the same DAG run and task, the second started once the first has
submitted part of the batch. Both carry the same try number. The emulator's journal says
what was paid for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.emulator import RunComfyEmulator

from .conftest import AIRFLOW, AirflowEnv

pytestmark = pytest.mark.integration

N = 20


def tasks_test(env: AirflowEnv, emu: RunComfyEmulator, run_id: str, log: Path) -> subprocess.Popen[str]:
    """``airflow tasks test`` of the batch task of DAG run ``run_id`` (both executions: one run, one ledger)."""
    return subprocess.Popen(
        [AIRFLOW, "tasks", "test", "it_batch_owners", "batch", run_id],
        env={**env.env, **emu.airflow_conn_env()},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test can pause all of it (SIGSTOP)
    )


def wait_for(condition: Callable[[], object], what: str, deadline: float = 300.0) -> None:
    until = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"waited {deadline:.0f} s for {what}")
        time.sleep(0.05)


def owner_record(ledger_dir: Path) -> dict[str, object]:
    record = L.read_sealed_json(LocalFileSystem(), str(ledger_dir / L.OWNER), str(ledger_dir))
    assert record is not None
    return record


def owner_of(ledger_dir: Path) -> str | None:
    try:
        record = L.read_sealed_json(LocalFileSystem(), str(ledger_dir / L.OWNER), str(ledger_dir))
    except L.LedgerReadError:
        return None  # being replaced right now
    return None if record is None else str(record["owner"])


def test_two_executions_at_once_with_the_same_try_number_pay_each_item_once_and_the_newer_finishes(
    airflow_env: AirflowEnv, emu: RunComfyEmulator, tmp_path: Path
) -> None:
    # The first wave (items 000-009) stays queued until the newer execution has taken over:
    # "mid-batch" is a condition here, not a guess about how long Airflow takes to start.
    emu.add_rule(prompt_contains="item 00", hold=True)
    emu.add_rule(run_seconds=0.5)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"prompt": f"item {n:03d}", "image_urls": [f"https://images.example.com/{n}.png"]})
            + "\n"
            for n in range(N)
        )
    )
    conf = {"inputs": str(inputs), "output_dir": f"file://{tmp_path / 'out'}"}
    run_id = f"owners_{tmp_path.name}"
    # One DAG run (queued: no scheduler here), whose batch task both executions run.
    parsed = airflow_env.airflow("dags", "reserialize")
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    made = airflow_env.airflow("dags", "trigger", "it_batch_owners", "-r", run_id, "-c", json.dumps(conf))
    assert made.returncode == 0, made.stdout + made.stderr
    ledger_dir = tmp_path / "out" / "it_batch_owners" / run_id / "batch" / "-1" / L.LEDGER_DIR

    older_log, newer_log = tmp_path / "older.log", tmp_path / "newer.log"
    older = tasks_test(airflow_env, emu, run_id, older_log)
    newer: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: emu.journal.count("submit") >= 10, "the first execution's first wave")
        first_owner = owner_of(ledger_dir)
        assert first_owner is not None
        first_try = owner_record(ledger_dir)["try_number"]
        newer = tasks_test(airflow_env, emu, run_id, newer_log)
        wait_for(lambda: owner_of(ledger_dir) not in (None, first_owner), "the second execution's takeover")
        # The newer one pauses (a stopped VM) while the first wave ends: the older one wakes with
        # items left to submit, so it meets the owner check, whoever would have been quicker.
        os.killpg(newer.pid, signal.SIGSTOP)
        emu.release()
        older.wait(timeout=600)
        os.killpg(newer.pid, signal.SIGCONT)
        newer.wait(timeout=600)
    finally:
        for proc in (older, newer):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                proc.kill()
    older_out, newer_out = older_log.read_text(), newer_log.read_text()

    paid = Counter(e.json["prompt"] for e in emu.journal.of("submit") if e.status_code == 200)
    assert sorted(paid.values()) == [1] * N, paid  # accepted submits == items: none paid twice
    assert newer.returncode == 0, newer_out[-3000:]
    # The older one stops before its next submit, and says why.
    # (``tasks test`` exits 0 whatever the task did: the log says what it did.)
    assert "AirflowFailException: This execution no longer owns the batch ledger" in older_out, older_out[
        -3000:
    ]
    # The same try number: the older one's owner record, and the one that took over, both say so.
    assert first_try == owner_record(ledger_dir)["try_number"], (first_try, owner_record(ledger_dir))
    manifest = ledger_dir.parent / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["succeeded"] * N
    assert len({r["request_id"] for r in rows}) == N
