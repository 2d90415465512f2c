"""A person checking a run in Airflow's UI, in a real Chromium, against a real deployment.

The run (``dags/runcomfy_ui.py``, finished once per module by ``conftest.site``) edited a
portrait with ``output_dir``, a mapped fan-out of three pictures and a batch of four, one
of each of which RunComfy (the emulator) failed. The tests log in through Airflow's form, open the task's "RunComfy
outputs" tab and the run's gallery, follow the operator's extra link, and create
``runcomfy`` connections in the form and press their *Test* button. Screenshots are
written under each test's tmp dir; their paths are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psutil
import pytest
from browser_site import DAG_ID, Site, log_in

pytestmark = pytest.mark.system

#: Every picture of a frame (or page) has loaded and has pixels: ``[[src, naturalWidth], ...]``.
PICTURES = (
    "() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : -1])"
)


def run_path(site: Site) -> str:
    return f"/dags/{DAG_ID}/runs/{quote(site.run_id, safe='')}"


def loaded_pictures(frame: Any, count: int) -> list[list[Any]]:
    """Wait until ``count`` pictures of ``frame`` have finished loading; their ``[src, naturalWidth]``."""
    # A function, not an expression: the view's Content-Security-Policy forbids eval.
    frame.wait_for_function(
        "count => Array.from(document.images).filter(i => i.complete).length >= count",
        arg=count,
        timeout=180_000,
    )
    return frame.evaluate(PICTURES)


def open_view(page: Any, site: Site, where: str, link: str) -> Any:
    """Log in, open ``where`` in Airflow's UI and follow its RunComfy ``link``: the view's frame."""
    log_in(page, site)
    page.goto(where)
    page.get_by_role("link", name=link).click()
    return view_frame(page)


def view_frame(page: Any) -> Any:
    """The outputs view inside the tab's iframe."""
    page.wait_for_selector("iframe")
    frame = page.frame_locator("iframe").first
    frame.locator("h1").first.wait_for()
    return next(f for f in page.frames if "/runcomfy/" in f.url)


# -- who may look ----------------------------------------------------------------------------------


def test_the_view_refuses_anonymous_and_unauthorised_users(site: Site) -> None:
    run = quote(site.run_id, safe="")
    paths = [
        f"/runcomfy/outputs/{DAG_ID}/{run}/edit?map_index=-1",
        f"/runcomfy/gallery/{DAG_ID}/{run}",
        f"/runcomfy/picture/{DAG_ID}/{run}/edit/-1/output/0",
        f"/runcomfy/picture/{DAG_ID}/{run}/edit/-1/input/0",
    ]
    outsider = {"Authorization": f"Bearer {site.token('outsider')}"}
    admin = {"Authorization": f"Bearer {site.token('admin')}"}
    with httpx.Client(base_url=site.base_url, timeout=30) as http:
        for path in paths:
            assert http.get(path).status_code == 401, path  # no login
            forged = httpx.get(f"{site.base_url}{path}", headers={"Cookie": "_token=forged"}, timeout=30)
            assert forged.status_code in (401, 403), path
            refused = http.get(path, headers=outsider)  # logged in, but not allowed to read this DAG
            assert refused.status_code == 403, (path, refused.text)
            assert b"<img" not in refused.content and b"\x89PNG" not in refused.content
            assert http.get(path, headers=admin).status_code == 200, path


# -- the outputs view ----------------------------------------------------------------------------


def test_a_finished_task_shows_its_input_beside_its_kept_output(page: Any, site: Site) -> None:
    frame = open_view(page, site, f"{run_path(site)}/tasks/edit", "RunComfy outputs")
    pictures = loaded_pictures(frame, 2)
    page.shot("task-outputs-tab")

    assert len(pictures) == 2 and all(width > 0 for _, width in pictures), pictures
    assert "/edit/-1/input/0" in pictures[0][0] and "/edit/-1/output/0" in pictures[1][0]
    text = frame.inner_text("body")
    assert "blackforestlabs/flux-1-kontext/pro/edit" in text
    assert "She is now holding an orange umbrella" in text
    assert "kept copy" in text  # the output comes from output_dir, not from RunComfy's URL
    request_id = site.deployment.xcom(DAG_ID, site.run_id, "edit", key="request_id")
    assert request_id and request_id in text


def test_the_run_gallery_shows_every_item_and_filters_the_failed_ones(page: Any, site: Site) -> None:
    frame = open_view(page, site, run_path(site), "RunComfy gallery")
    # 8 tiles: the edit, 3 mapped instances, 4 batch lines; failed items have no output picture.
    pictures = loaded_pictures(frame, 14)
    page.shot("run-gallery")
    # Tiles show thumbnails made by the API server (``?size=thumb``), the picture opens on a click.
    assert all("size=thumb" in src for src, _ in pictures), pictures
    shown = {
        src.split("/runcomfy/picture/")[1].split("/", 2)[2].replace("size=thumb", "").rstrip("?&"): width
        for src, width in pictures
    }
    succeeded = ["edit/-1/{}/0", "enrich/0/{}/0", "enrich/1/{}/0"] + [
        f"batch/-1/{{}}/0?item={i}" for i in range(3)
    ]
    for item in succeeded:
        assert shown[item.format("input")] > 0 and shown[item.format("output")] > 0, (item, shown)
    # The failed items' input host does not exist: the frame says the picture is not available.
    assert shown["enrich/2/input/0"] == 0 and shown["batch/-1/input/0?item=3"] == 0

    frame.get_by_role("link", name="Failed · 2").click()
    frame = view_frame(page)
    frame.wait_for_function("() => document.querySelectorAll('.tile').length === 2")
    tiles = frame.locator(".tile").all_inner_texts()
    page.shot("run-gallery-failed")
    assert any("enrich [2]" in tile for tile in tiles)
    assert any("batch · #3" in tile and "host not found" in tile for tile in tiles)


def test_a_batch_task_shows_its_manifest_as_tiles_and_serves_the_manifest(page: Any, site: Site) -> None:
    frame = open_view(page, site, f"{run_path(site)}/tasks/batch", "RunComfy outputs")
    pictures = loaded_pictures(frame, 7)
    page.shot("batch-outputs-tab")
    assert sum(width > 0 for _, width in pictures) == 6  # 3 succeeded lines: input and output each
    text = frame.inner_text("body")
    assert "Succeeded · 3" in text and "Failed · 1" in text and "manifest.jsonl" in text

    manifest = frame.get_by_role("link", name="manifest.jsonl")
    lines = httpx.get(
        site.base_url + manifest.get_attribute("href"),
        headers={"Authorization": f"Bearer {site.token('admin')}"},
        timeout=30,
    )
    assert lines.status_code == 200, lines.text
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert [r["status"] for r in records] == ["succeeded"] * 3 + ["failed"]
    refused = httpx.get(
        site.base_url + manifest.get_attribute("href"),
        headers={"Authorization": f"Bearer {site.token('outsider')}"},
        timeout=30,
    )
    assert refused.status_code == 403


def test_the_extra_link_opens_the_outputs_tab(page: Any, site: Site) -> None:
    log_in(page, site)
    page.goto(f"{run_path(site)}/tasks/enrich/mapped/1/details")
    link = page.get_by_role("link", name="RunComfy output", exact=True)
    link.click()
    page.wait_for_url("**/tasks/enrich/mapped/1/plugin/runcomfy-outputs")
    frame = view_frame(page)
    pictures = loaded_pictures(frame, 2)
    page.shot("extra-link-opened")
    assert all(width > 0 for _, width in pictures), pictures
    assert "enrich [1]" in frame.inner_text("body")


# -- a person approves the edit before it is published -----------------------------------------------


def test_a_reviewer_sees_the_edit_in_the_approval_and_approving_publishes_it(
    page: Any, site: Site, tmp_path: Path
) -> None:
    """``dags/runcomfy_review.py``: Airflow's ApprovalOperator shows the pictures through the view."""
    deployment = site.deployment
    published = tmp_path / "published"
    run_id = deployment.trigger_dag(
        "runcomfy_review",
        conf={
            "emulator": site.emulator.base_url,
            "output_dir": (tmp_path / "outputs").as_uri(),
            "publish_dir": str(published),
        },
    )
    deployment.wait_for_task_state("runcomfy_review", run_id, "review", "awaiting_input", timeout=120)
    log_in(page, site)
    page.goto(f"/dags/runcomfy_review/runs/{quote(run_id, safe='')}/tasks/review")
    page.get_by_role("link", name="Required Action (1)").click()
    pictures = loaded_pictures(page.main_frame, 2)
    page.shot("review-required-action")
    assert [width > 0 for _, width in pictures] == [True, True], pictures
    assert all("/runcomfy/picture/runcomfy_review/" in src for src, _ in pictures)
    assert page.get_by_role("link", name="Open the RunComfy outputs view").is_visible()

    page.get_by_role("button", name="Approve").click()
    assert deployment.wait_for_run("runcomfy_review", run_id, timeout=120) == "success"
    [copy] = published.iterdir()
    assert copy.read_bytes().startswith(b"\x89PNG")


# -- the connection form and its Test button ------------------------------------------------------


def create_and_test(page: Any, site: Site, conn_id: str, token: str) -> str:
    """Create a ``runcomfy`` connection in the form, press its Test button; the toast's text."""
    page.goto("/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=connection_id]").fill(conn_id)
    kind = dialog.get_by_role("combobox").first
    kind.click(force=True)
    kind.fill("RunComfy")
    page.keyboard.press("Enter")
    dialog.locator("input[name=host]").fill(site.emulator.base_url)
    dialog.locator("input[name=password]").fill(token)
    page.shot(f"connection-form-{conn_id}")
    dialog.get_by_role("button", name="Save").click()
    dialog.wait_for(state="hidden")
    row = page.get_by_role("row").filter(has_text=conn_id)
    with page.expect_response("**/api/v2/connections/test") as answered:
        row.get_by_role("button", name="Test Connection").click()
    assert answered.value.status == 200, answered.value.text()
    toast = page.get_by_text(f"'{conn_id}'").last
    toast.wait_for()
    page.wait_for_timeout(1000)  # the toast slides in
    page.shot(f"connection-tested-{conn_id}")
    return str(page.locator("[data-part=root]").filter(has_text=f"'{conn_id}'").last.inner_text())


def test_the_test_button_of_a_connection_made_in_the_form(page: Any, site: Site) -> None:
    log_in(page, site)
    green = create_and_test(page, site, "runcomfy_made_in_ui", site.emulator.token)
    assert green.startswith("Test Connection Successful"), green
    assert "the API token of Airflow connection 'runcomfy_made_in_ui' was accepted" in green

    red = create_and_test(page, site, "runcomfy_bad_token", "not-the-token")
    assert red.startswith("Test Connection Failed"), red
    assert "RunComfy rejected the API token" in red
    assert "'runcomfy_bad_token'" in red  # the connection being tested, not the API's stand-in id
    assert "not-the-token" not in red


def test_the_api_still_refuses_a_test_of_another_port_with_the_stored_token(site: Site) -> None:
    """What the Test button ran into: only ``port: 0`` of a ``runcomfy`` test is left out, nothing else."""
    body = {"connection_id": "runcomfy_made_in_ui", "conn_type": "runcomfy", "password": "***", "port": 1}
    answer = site.deployment.api.post("/connections/test", json=body)
    assert answer.status_code == 400 and "differs from the stored connection" in answer.text


# -- what a page costs the API server -----------------------------------------------------------------


def test_what_a_gallery_page_costs_the_api_server(browser: Any, site: Site, record_figure: Any) -> None:
    """CPU seconds and bytes the API server spends on one gallery page and its pictures (a figure, not a limit)."""
    server = psutil.Process(site.deployment.procs["api-server"].pid)
    tree = [server, *server.children(recursive=True)]

    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running())

    path = f"/runcomfy/gallery/{DAG_ID}/{quote(site.run_id, safe='')}"
    warm = browser.new_context(base_url=site.base_url)
    cold = browser.new_context(base_url=site.base_url)  # its own cache: every picture is fetched
    try:
        page = warm.new_page()
        log_in(page, site)
        page.goto(path)  # the view's app is built on its first request: not counted
        loaded_pictures(page, 14)
        page = cold.new_page()
        log_in(page, site)
        before = cpu()
        page.goto(path)
        pictures = loaded_pictures(page, 14)
        spent = cpu() - before
        transferred = page.evaluate(
            "() => performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))"
            ".reduce((n, e) => n + (e.encodedBodySize || 0), 0)"
        )
    finally:
        warm.close()
        cold.close()
    record_figure("gallery page (8 tiles, 14 pictures): API server CPU", spent, "s")
    record_figure("gallery page: bytes through the API server", transferred / 1000, " kB")
    assert len(pictures) == 14 and transferred > 0
