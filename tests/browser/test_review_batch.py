"""A reviewer checks a 20-image batch: what each item was, what it cost, which ones failed.

``dags/runcomfy_batch20.py`` runs a batch of 20 named inputs, two of which RunComfy (the
emulator) fails. The test opens the batch's task tab and the run's gallery in Chromium, as
a reviewer would, and writes the screenshots ``docs/ui.md`` shows (``docs/img/``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_site import Site, log_in
from test_outputs_view import loaded_pictures, view_frame

pytestmark = pytest.mark.system

DAG = "runcomfy_batch20"
#: Where the screenshots of the docs live.
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"


def keep_for_docs(page: Any, name: str) -> Path:
    """A screenshot of the page, made small (a 128-colour PNG), written to ``docs/img/``."""
    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot(full_page=False)))
    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    path = DOC_IMAGES / f"{name}.png"
    shot.convert("RGB").quantize(colors=128).save(path, optimize=True)
    print(f"[screenshot] {path} ({path.stat().st_size} bytes)")
    return path


@pytest.fixture(scope="module")
def batch_run(site: Site, tmp_path_factory: pytest.TempPathFactory) -> str:
    run_id = site.deployment.trigger_dag(
        DAG,
        conf={"emulator": site.emulator.base_url, "output_dir": tmp_path_factory.mktemp("batch20").as_uri()},
    )
    site.deployment.wait_for_run(DAG, run_id, timeout=300)
    return run_id


def test_a_reviewer_sees_names_costs_and_failed_items(page: Any, site: Site, batch_run: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1000})
    log_in(page, site)
    run = quote(batch_run, safe="")

    # The batch task's tab: a banner says items failed; every tile names its input and its cost.
    page.goto(f"/dags/{DAG}/runs/{run}/tasks/enrich_catalogue")
    page.get_by_role("link", name="RunComfy outputs").click()
    frame = view_frame(page)
    pictures = loaded_pictures(frame, 23)  # 12 inputs, 11 outputs: line 6 failed and has none
    text = frame.inner_text("body")
    keep_for_docs(page, "ui-batch-task-tab")
    assert "2 items of this batch did not succeed" in text
    assert "Succeeded · 18" in text and "Failed · 2" in text
    tiles = frame.locator(".tile").all_inner_texts()
    assert len(tiles) == 12 and all("$" in tile for tile in tiles[:6]), tiles
    assert any("portrait.png" in tile for tile in tiles) and any("shop-7.png" in tile for tile in tiles)
    assert frame.locator(".tile.bad").count() == 1  # line 6 is on the first page
    # Thumbnails, not the pictures: every one is a small WebP made by the API server.
    assert all("size=thumb" in src for src, _ in pictures if "/output/" in src)

    # A tile's link opens that item's own page (inputs beside outputs), not the batch page.
    frame.locator(".tile.bad").get_by_role("link", name="details →").click()
    item_frame = view_frame(page)
    item_frame.get_by_text("← the whole batch").wait_for()
    assert "enrich_catalogue · #6" in item_frame.inner_text("h1")
    assert "shop-7.png" in item_frame.inner_text("body")

    # The run's gallery: its cost, a row per task with the failed items marked.
    page.goto(f"/dags/{DAG}/runs/{run}")
    page.get_by_role("link", name="RunComfy gallery").click()
    frame = view_frame(page)
    loaded_pictures(frame, 23)
    keep_for_docs(page, "ui-run-gallery")
    summary = frame.locator(".summary").inner_text()
    assert "Run cost" in summary and "18 of 20 succeeded" in summary and "⚠ 2 failed" in summary
