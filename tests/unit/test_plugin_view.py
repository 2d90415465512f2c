"""The outputs view at real sizes and with hostile data: manifests, thumbnails, malformed URLs, status.

Each rule on its own, with real files, real Pillow and real HTTP against the emulator; the
whole view behind Airflow's login is in ``tests/browser``.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.plugins import html
from airflow_provider_runcomfy.plugins.manifests import FAILED, SUCCEEDED, ManifestCache, read_lines
from airflow_provider_runcomfy.plugins.media import Fetcher, PictureUnavailable
from airflow_provider_runcomfy.plugins.records import Item, item_from_manifest_line
from airflow_provider_runcomfy.plugins.status import advice, ask_runcomfy
from airflow_provider_runcomfy.plugins.thumbnails import ThumbnailCache, ThumbnailError, make_thumbnail

RUN = "manual__2026-01-01T00:00:00+00:00"
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def line(index: int, status: str = "succeeded", cost: float | None = 0.04, **more: Any) -> str:
    record = {
        "index": index,
        "input": {"prompt": f"item {index}", "image_urls": [f"https://cdn.example/in/{index}.png"]},
        "status": status,
        "cost_usd": cost,
        **more,
    }
    return json.dumps(record) + "\n"


# -- manifests: indexed once per change, read a page at a time ------------------------------------


def test_a_manifest_is_indexed_once_and_a_page_reads_only_its_own_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    text = "".join(line(i, "failed" if i % 10 == 3 else "succeeded") for i in range(200))
    manifest.write_text(text + "\n" + "{not json\n" + line(200, "in_flight", None, future_field=[1, 2]))
    cache = ManifestCache()
    index = cache.index(manifest.as_uri())
    assert len(index) == 202  # the blank line is skipped
    assert index.count("failed") == 20 + 1  # the broken line counts as failed, it is shown
    assert index.count("succeeded") == 180
    assert index.outcomes[0] == SUCCEEDED and index.outcomes[3] == FAILED
    assert index.cost_usd == pytest.approx(0.04 * 200)
    # The same file again: the index is reused, not rebuilt.
    assert cache.index(manifest.as_uri()) is index and cache.builds == 1
    # A page's lines are read by seeking; a field the batch adds later is carried along.
    [(_, first), (_, last)] = read_lines(manifest.as_uri(), index, [13, 201])
    assert first["index"] == 13 and first["status"] == "failed"
    assert last["future_field"] == [1, 2] and last["status"] == "in_flight"
    [(_, broken)] = read_lines(manifest.as_uri(), index, [200])
    assert broken["status"] == "failed" and "not valid JSON" in broken["error"]

    # The batch rewrites its manifest (a retry finished the failed items): indexed again.
    manifest.write_text("".join(line(i) for i in range(200)))
    again = cache.index(manifest.as_uri())
    assert again is not index and cache.builds == 2 and again.count("failed") == 0


def test_a_manifest_line_names_its_input_and_its_cost() -> None:
    batch = Item("dag_a", RUN, "batch", -1, model_id="google/nano-banana/edit", output_dir="/out")
    shown = item_from_manifest_line(batch, 7, json.loads(line(7)))
    assert shown.input_name == "7.png" and shown.cost_usd == 0.04 and shown.output_dir == "/out"
    long_prompt = Item("d", "r", "t", -1, prompt="Give the portrait a warm golden-hour light " * 3)
    assert long_prompt.input_name.startswith("Give the portrait") and len(long_prompt.input_name) <= 48
    page = html.tiles([shown], prefix="/runcomfy", in_batch=True)
    assert "7.png" in page and "$0.04" in page and "#7" in page
    # The tile opens that line's own page, not the batch page it is on.
    assert 'href="/runcomfy/outputs/dag_a/' in page and "item=7" in page


def test_the_gallery_shows_the_runs_cost_and_marks_a_batch_with_failed_items() -> None:
    edit = Item("dag_a", RUN, "edit", -1, state="success", status="succeeded", cost_usd=0.04)
    batch = Item("dag_a", RUN, "batch", -1, state="success", manifest="/out/m.jsonl")
    summaries = [
        html.TaskSummary(edit, {}, 0.04),
        html.TaskSummary(batch, {"total": 20, "succeeded": 17, "failed": 3}, 0.68),
    ]
    page = html.gallery_page(
        "dag_a", RUN, [], prefix="/runcomfy", show="all", counts={}, pages="", summaries=summaries
    )
    assert "Run cost <b>$0.72</b>" in page
    assert "17 of 20 succeeded" in page and "⚠ 3 failed" in page and '<tr class=bad><td><a href="' in page


# -- thumbnails ---------------------------------------------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_a_large_picture_becomes_a_small_webp(tmp_path: Path) -> None:
    big = png_bytes(2000, 1500)
    small = make_thumbnail(big, 256)
    with Image.open(io.BytesIO(small)) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == 256 and thumb.size[0] > thumb.size[1]
    assert len(small) < len(big) / 10

    cache = ThumbnailCache(tmp_path / "thumbs")
    assert cache.get("stored\nfile:///out/x.png\nabc", 256) is None
    cache.put("stored\nfile:///out/x.png\nabc", 256, small)
    assert cache.get("stored\nfile:///out/x.png\nabc", 256) == small
    assert cache.get("stored\nfile:///out/x.png\nabc", 768) is None  # another size is another file
    assert cache.get("url\nhttps://cdn/x.png", 256, max_age=60) is None


def test_what_is_not_a_picture_or_would_explode_gets_no_thumbnail() -> None:
    with pytest.raises(ThumbnailError):
        make_thumbnail(b"[core]\ndags_folder = /secret\n", 256)
    whole = png_bytes(600, 400)
    with pytest.raises(ThumbnailError):
        make_thumbnail(whole[: len(whole) // 2], 256)  # cut short
    # A PNG whose header claims 100,000 x 100,000 pixels: refused before any decoding.
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00" * 64
    )
    with pytest.raises(ThumbnailError):
        make_thumbnail(bomb, 256)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    with pytest.raises(ThumbnailError):
        make_thumbnail(svg, 256)


# -- malformed URLs: a placeholder and a reason, never a 500 ---------------------------------------

MALFORMED = ["https://[::1/in.png", "http://a[b/x.png", "https://host:port/x.png", "https:///x.png"]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_a_placeholder_tile_and_the_page_renders(url: str) -> None:
    record = Item("dag_a", RUN, "edit", -1, state="success", status="succeeded", inputs=[url], outputs=[url])
    assert html.not_shown(url, "input") == "not a valid URL"
    page = html.task_page(record, prefix="/runcomfy")
    gallery = html.tiles([record], prefix="/runcomfy")
    for text in (page, gallery):
        assert "not a valid URL" in text and "/input/0" not in text and "/output/0?size" not in text


@pytest.mark.parametrize("url", MALFORMED)
def test_the_fetcher_refuses_a_malformed_url_with_a_reason(url: str) -> None:
    fetcher = Fetcher()
    try:
        with pytest.raises(PictureUnavailable) as refused:
            fetcher.read(url, api_base_url="http://127.0.0.1:1")
    finally:
        fetcher.close()
    assert refused.value.status in (403, 422, 502) and refused.value.message


def test_a_redirect_to_a_malformed_url_is_refused_with_a_reason(runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_fault("sample", "redirect", location="http://a[b/x.png")
    fetcher = Fetcher()
    try:
        with pytest.raises(PictureUnavailable) as refused:
            fetcher.read(runcomfy_emulator.sample_url("street"), api_base_url=runcomfy_emulator.base_url)
        # The slot it held is free again: as many fetches as slots still start.
        runcomfy_emulator.clear_faults()
        for _ in range(5):
            content_type, body = fetcher.read(
                runcomfy_emulator.sample_url("street"), api_base_url=runcomfy_emulator.base_url
            )
            assert content_type == "image/png" and body.startswith(b"\x89PNG")
    finally:
        fetcher.close()
    # A reason a person can act on (the policy's own words), not a 500.
    reason = refused.value.message.lower()
    assert refused.value.status in (403, 422, 502) and ("malformed" in reason or "x.png" in reason)


def test_redirects_follow_the_clients_policy_and_limit(runcomfy_emulator: RunComfyEmulator) -> None:
    """The view has no redirect loop of its own: the client's Opener follows (and checks) each hop."""
    from airflow_provider_runcomfy.client._urlpolicy import MAX_REDIRECTS

    sample = runcomfy_emulator.sample_url("street")
    runcomfy_emulator.add_fault("sample", "redirect", location=sample, times=MAX_REDIRECTS)
    fetcher = Fetcher()
    try:
        content_type, _ = fetcher.read(sample, api_base_url=runcomfy_emulator.base_url)
    finally:
        fetcher.close()
    assert content_type == "image/png"


# -- a task that failed while its job went on: ask RunComfy -------------------------------------------


def submit(emulator: RunComfyEmulator) -> str:
    with RunComfyClient(token=emulator.token, base_url=emulator.base_url) as client:
        return client.submit(FLUX, {"prompt": "x", "image_url": emulator.sample_url()}).request_id


def test_a_failed_task_whose_job_succeeded_says_so_and_that_clearing_it_is_free(
    runcomfy_emulator: RunComfyEmulator, runcomfy_emulator_conn_env: dict[str, str]
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    request_id = submit(runcomfy_emulator)
    record = Item("dag_a", RUN, "edit", -1, state="failed", request_id=request_id)
    from airflow_provider_runcomfy.plugins.app import _status_from_runcomfy

    note = _status_from_runcomfy(record)
    assert record.status == "succeeded" and record.status_source == "runcomfy"
    assert note and "billed" in note and "Clearing the task re-attaches" in note
    page = html.task_page(record, prefix="/runcomfy", note=note)
    assert "asked RunComfy now" in page and "The task failed: its Logs tab says why" not in page


def test_a_cancelled_job_shows_cancelled(
    runcomfy_emulator: RunComfyEmulator, runcomfy_emulator_conn_env: dict[str, str]
) -> None:
    runcomfy_emulator.set_config(queue_seconds=60, run_seconds=0)
    request_id = submit(runcomfy_emulator)
    with RunComfyClient(token=runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        assert client.cancel(request_id).outcome == "cancelled"
    asked = ask_runcomfy(request_id)
    assert asked.status == "cancelled"
    record = Item("dag_a", RUN, "edit", -1, state="failed", request_id=request_id, status="cancelled")
    assert record.failed
    page = html.task_page(record, prefix="/runcomfy", note=advice("failed", asked))
    assert ">cancelled<" in page and "was cancelled" in page


def test_runcomfy_that_cannot_be_asked_is_said_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT",
        json.dumps({"conn_type": "runcomfy", "host": "http://127.0.0.1:1", "password": "t"}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT_EXTRA", "")
    asked = ask_runcomfy("req_unreachable_1", conn_id="runcomfy_default")
    assert asked.status is None and asked.problem
    assert "could not be asked" in (advice("failed", asked) or "")


def test_a_storage_path_named_as_an_input_is_a_placeholder_never_read() -> None:
    """A param or a line of an inputs file can name any file: the view reads none of them."""
    assert html.not_shown("/data/out/victim_dag/run/edit/-1/r_0.png", "input")
    assert html.not_shown("s3://victims/x.png", "input")
    assert html.not_shown("https://cdn.example/x.png", "input") is None
    assert html.not_shown("data:image/png;base64,AAAA", "input") is None
