"""The main job, end to end and offline: example DAGs against the bundled RunComfy emulator.

Starts the emulator on a free loopback port, prepares a throwaway Airflow
(``.airflow-demo/``, SQLite), points connection ``runcomfy_default`` at the
emulator, then runs under ``airflow dags test`` (triggers run in-line):

1. ``runcomfy_flux_kontext_edit``: one edit; prints what the task handed downstream.
2. ``runcomfy_batch_enrichment``: one ``RunComfyBatchOperator`` task over the emulator's
   sample pictures plus one input on a ``.invalid`` host that fails on purpose, keeping
   the outputs under ``out/batch/`` with a manifest and a contact sheet.

It ends by printing where the edited images, the manifest and the contact sheet are.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".airflow-demo"
OUT = REPO / "out"
DAG_ID = "runcomfy_flux_kontext_edit"
BATCH_DAG_ID = "runcomfy_batch_enrichment"
#: The batch's deliberately failing input: hosts under .invalid never resolve.
BROKEN_INPUT = "https://missing-image.invalid/enrichment/input.png"


def main() -> int:
    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    started = time.monotonic()
    HOME.mkdir(exist_ok=True)
    OUT.mkdir(exist_ok=True)
    airflow = str(Path(sys.executable).with_name("airflow"))
    with RunComfyEmulator(queue_seconds=1.0, run_seconds=2.0) as emulator:
        print(f"RunComfy emulator listening on {emulator.base_url}")
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
            **emulator.airflow_conn_env(),
        }
        _run([airflow, "db", "migrate"], env, quiet=True)
        _run(
            [airflow, "pools", "set", "runcomfy", "4", "RunComfy concurrency", "--include-deferred"],
            env,
            quiet=True,
        )
        conf = {
            "image_url": f"{emulator.base_url}/samples/portrait.png",
            "prompt": "She is now holding an orange umbrella and smiling",
        }
        print(f"Running `airflow dags test {DAG_ID}` (log: {HOME / 'dags-test.log'}) ...")
        proc = _run(
            [airflow, "dags", "test", DAG_ID, "-c", json.dumps(conf)], env, log=HOME / "dags-test.log"
        )
        result = _latest_return_value(HOME / "airflow.db", DAG_ID, "edit")
        if proc.returncode != 0 or not result:
            print(proc.stdout[-4000:] + proc.stderr[-4000:])
            print("The example DAG did not succeed; see the log above.", file=sys.stderr)
            return 1
        saved = _save_outputs(result)

        # Quicker jobs for the batch, so the demo stays well under a minute.
        emulator.add_rule(model_id="google/nano-banana/edit", queue_seconds=0.2, run_seconds=0.6)
        batch_conf = {
            "image_urls": [emulator.sample_url(n) for n in ("portrait", "street", "product")]
            + [BROKEN_INPUT],
            "output_dir": f"file://{OUT / 'batch'}",
            "prompt": "Give the scene a warm golden-hour light",
        }
        print(f"Running `airflow dags test {BATCH_DAG_ID}` (log: {HOME / 'batch-test.log'}) ...")
        batch_started = time.monotonic()
        proc = _run(
            [airflow, "dags", "test", BATCH_DAG_ID, "-c", json.dumps(batch_conf)],
            env,
            log=HOME / "batch-test.log",
        )
        summary = _latest_return_value(HOME / "airflow.db", BATCH_DAG_ID, "summarize")
        if proc.returncode != 0 or not summary:
            print(proc.stdout[-4000:] + proc.stderr[-4000:])
            print("The batch example did not succeed; see the log above.", file=sys.stderr)
            return 1
        batch_seconds = time.monotonic() - batch_started
        manifest = Path(summary["manifest"].removeprefix("file://"))
        records = [json.loads(line) for line in manifest.read_text().splitlines()]

    print()
    print(f"request_id : {result['request_id']}")
    print(f"model_id   : {result['model_id']}")
    print(f"status     : {result['status']}")
    for url in result["outputs"]:
        print(f"output URL : {url}")
    for path in saved:
        print(f"image file : {path}")
    print(f"input image: {conf['image_url']} (the emulator's sample)")
    print()
    print(
        f"batch      : {summary['succeeded']} of {summary['images']} images edited, "
        f"{summary['outputs_stored']} output(s) kept ({summary['bytes_stored']} bytes) in {batch_seconds:.1f} s"
    )
    for record in records:
        for stored in record["stored"]:
            print(f"edited     : {stored['uri'].removeprefix('file://')}")
        if record["error"]:
            given = record["input"]
            shown = given["image_urls"][0] if isinstance(given, dict) and given.get("image_urls") else given
            print(f"failed     : {shown}: {record['error']}")
    print(f"manifest   : {manifest}")
    print(f"contact    : {summary['contact_sheet'].removeprefix('file://')}")
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


def _run(
    cmd: list[str], env: dict[str, str], *, quiet: bool = False, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if quiet and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _latest_return_value(db: Path, dag_id: str, task_id: str) -> dict | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id "
            "WHERE x.dag_id = ? AND x.task_id = ? AND x.key = 'return_value' ORDER BY r.id DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
    return json.loads(row[0]) if row else None


def _save_outputs(result: dict) -> list[Path]:
    """Keep a copy of each output (RunComfy's output URLs are temporary)."""
    import httpx

    saved = []
    for n, url in enumerate(result["outputs"]):
        path = OUT / f"{result['request_id']}_{n}.png"
        with httpx.stream("GET", url, timeout=30) as response, path.open("wb") as file:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                file.write(chunk)
        saved.append(path)
    return saved


if __name__ == "__main__":
    sys.exit(main())
