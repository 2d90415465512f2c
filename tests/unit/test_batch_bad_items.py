"""One bad item is one bad item, and the batch keeps little of what RunComfy answers.

A malformed input URL makes its item invalid (the reason in the manifest), a malformed output
URL makes its item failed; the other items go on. A result of megabytes is cut to what the
manifest needs before it reaches a trigger event or the ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from _helpers_batch import open_batch
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import load_inputs, make_items, prepare_items
from airflow_provider_runcomfy.batch.lean import MAX_OUTPUT_URLS, slim_outcome
from airflow_provider_runcomfy.batch.report import manifest_rows
from airflow_provider_runcomfy.batch.window import WakeRule, Window
from airflow_provider_runcomfy.client import AsyncRunComfyClient, RunComfyClient
from airflow_provider_runcomfy.client.errors import InvalidInputError
from airflow_provider_runcomfy.client.models import RequestResult
from airflow_provider_runcomfy.client.outcome import Outcome
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.models import NANO_BANANA_EDIT as MODEL
from airflow_provider_runcomfy.models import validate_input

LOG = logging.getLogger("batch-bad-items")


def test_a_malformed_input_url_makes_its_item_invalid_and_the_others_ready(tmp_path: Path) -> None:
    inputs = [
        {
            "prompt": f"item {n}",
            "image_urls": ["https://[::1/x.png" if n == 2 else f"https://images.example.com/{n}.png"],
        }
        for n in range(5)
    ]
    run = open_batch(MODEL, tmp_path, inputs)

    def prepare(items):  # type: ignore[no-untyped-def]
        return prepare_items(
            MODEL, items, for_submit=False, preflight="off", sign_expiry=None, api_base_url=None, log=LOG
        )

    assert run.check(prepare, validate_input) == 1
    states = {r.index: (r.state, r.error) for r in L.Ledger(run.folder, MODEL).load()}
    assert [states[n][0] for n in range(5)] == [L.READY, L.READY, L.INVALID, L.READY, L.READY]
    assert "[::1/x.png" in str(states[2][1]) or "malformed" in str(states[2][1])
    # The second pass (signing, just before the submit) survives it too.
    items = make_items(MODEL, inputs)
    prepared = prepare_items(
        MODEL, items, for_submit=True, preflight="off", sign_expiry=None, api_base_url=None, log=LOG
    )
    assert [isinstance(p, dict) for p in prepared] == [True, True, False, True, True]


def test_a_malformed_output_url_fails_its_item_and_the_others_are_kept(
    emu: RunComfyEmulator, tmp_path: Path
) -> None:
    folder = ObjectStoragePath(f"file://{tmp_path}")
    inputs = [{"prompt": f"item {n}", "image_urls": [emu.sample_url()]} for n in range(3)]
    items = make_items(MODEL, inputs)
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        ids = [client.submit(MODEL, item.input).request_id for item in items]
    run = BatchRun(
        MODEL,
        items,
        L.Ledger(folder, MODEL).load(),
        folder,
        max_in_flight=3,
        max_output_bytes=1 << 22,
        resubmit_unknown=False,
        log=LOG,
        api_base_url=emu.base_url,
    )
    run.ledger.append(
        [
            {
                "key": i.key,
                "index": i.index,
                "state": L.SUBMITTED,
                "request_id": r,
                "submitted_at": time.time(),
            }
            for i, r in zip(items, ids, strict=True)
        ]
    )
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        outcomes = []
        for item, request_id in zip(items, ids, strict=True):
            event = Outcome.from_result(client.get_result(request_id), MODEL).to_event()
            if item.index == 1:
                event["outputs"] = ["http://[::1"]  # what a broken answer would carry
            outcomes.append({**event, "key": item.key})
    run.apply_outcomes(outcomes)
    for _ in range(3):  # a retryable failure is tried again a few times; this one is not
        run.store_outputs()
    rows = list(manifest_rows(run))
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert "malformed output URL" in rows[1]["error"] or "URL" in rows[1]["error"]


def test_a_result_of_megabytes_is_kept_as_a_few_hundred_bytes() -> None:
    result = RequestResult.model_validate(
        {
            "request_id": "r1",
            "status": "succeeded",
            "output": {
                "images": [f"https://cdn.runcomfy.net/o/{n}.png" for n in range(40)],
                "blob": "x" * (4 << 20),
            },
            "cost": 0.039,
        }
    )
    slim = slim_outcome({**Outcome.from_result(result, MODEL).to_event(), "key": "k.0"})
    assert len(slim["outputs"]) == MAX_OUTPUT_URLS and slim["outputs_dropped"] == 40 - MAX_OUTPUT_URLS
    assert slim["cost_usd"] == 0.039 and "output" not in slim
    assert len(json.dumps(slim)) < 2_000


def test_twenty_items_with_many_outputs_make_an_event_and_a_checkpoint_under_100_kb(
    emu: RunComfyEmulator, tmp_path: Path
) -> None:
    emu.add_rule(num_outputs=100, output_kind="images")
    folder = ObjectStoragePath(f"file://{tmp_path}")
    inputs = [{"prompt": f"item {n}", "image_urls": [emu.sample_url()]} for n in range(20)]
    items = make_items(MODEL, inputs)
    with RunComfyClient(emu.token, base_url=emu.base_url) as client:
        ids = [client.submit(MODEL, item.input).request_id for item in items]
    now = time.time()

    async def wait() -> dict[str, Any]:
        async with AsyncRunComfyClient(emu.token, base_url=emu.base_url) as client:
            return await Window(
                [[r, i.key, now] for r, i in zip(ids, items, strict=True)],
                model_id=MODEL,
                poll_interval=0.05,
                rule=WakeRule(20, 30.0),
                deadline=time.time() + 30,
            ).wait(client)

    event = asyncio.run(wait())
    assert event["status"] == "ready" and len(event["outcomes"]) == 20
    assert len(json.dumps(event)) <= 100_000
    ledger = L.Ledger(folder, MODEL)
    ledger.append(
        [
            {"key": i.key, "index": i.index, "state": L.SUBMITTED, "request_id": r}
            for i, r in zip(items, ids, strict=True)
        ]
    )
    run = BatchRun(
        MODEL, items, ledger, folder, max_in_flight=20, max_output_bytes=1, resubmit_unknown=False, log=LOG
    )
    run.apply_outcomes(event["outcomes"])
    ledger.compact(force=True)
    assert Path(folder.path, L.LEDGER_DIR, L.CHECKPOINT).stat().st_size <= 100_000


def test_a_signed_url_in_an_inputs_line_reaches_the_manifest_without_its_signature(tmp_path: Path) -> None:
    # An inputs file may be another DAG's manifest, or a list of pre-signed URLs: the manifest this
    # batch writes (served by the outputs view) keeps what each line asked for, not its credentials.
    signed = "https://bucket.example.com/in.png?X-Amz-Expires=600&X-Amz-Signature=5ecret5ignature0123456789"
    inputs = [{"prompt": "item", "image_urls": [signed]}]
    run = open_batch(MODEL, tmp_path, inputs)
    rows = list(manifest_rows(run))
    shown = json.dumps(rows[0]["input"])
    assert "5ecret5ignature0123456789" not in shown
    assert "bucket.example.com/in.png" in shown  # still says which file


def test_an_inputs_file_no_filesystem_can_read_is_refused_naming_inputs_not_output_dir() -> None:
    """The inputs file goes through the one storage resolver: its error names the argument at fault."""
    with pytest.raises(
        InvalidInputError, match=r"^inputs 'nosuch://bucket/x\.jsonl': no filesystem"
    ) as refused:
        load_inputs("nosuch://bucket/x.jsonl")
    assert "output_dir" not in str(refused.value)
