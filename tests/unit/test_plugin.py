"""The outputs view's parts, one at a time: what it reads, what it serves, what it refuses.

The whole view, behind Airflow's login and per-DAG authorisation in a real API server, is
tested in a real browser (``tests/browser``); here each rule is checked on its own, over
real HTTP against the emulator where a picture is fetched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.get_provider_info import get_provider_info
from airflow_provider_runcomfy.plugins import html
from airflow_provider_runcomfy.plugins.media import (
    Fetcher,
    PictureUnavailable,
    checked_type,
    looks_like_media,
    open_data_uri,
    open_stored,
)
from airflow_provider_runcomfy.plugins.records import Item, input_images, item_from_manifest_line

RUN = "manual__2026-01-01T00:00:00+00:00"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def item(**fields: Any) -> Item:
    return Item("dag_a", RUN, "edit", -1, **fields)


# -- what the view reads ---------------------------------------------------------------------------


def test_input_pictures_come_from_the_typed_fields_and_any_model_input() -> None:
    assert input_images({"image_url": "https://a/x.png", "prompt": "p"}) == ["https://a/x.png"]
    assert input_images({"image_urls": ["https://a/1.png", "https://a/2.png", "https://a/1.png"]}) == [
        "https://a/1.png",
        "https://a/2.png",
    ]
    assert input_images({"model_id": "m", "input": {"images": ["s3://b/k.png"], "seed": 3}}) == [
        "s3://b/k.png"
    ]
    assert input_images({"prompt": "no pictures", "image_url": None}) == []


SAFE_RUN = RUN.replace(":", "_").replace("+", "_")


def test_a_kept_copy_is_served_only_from_this_task_instances_folder_of_its_own_output_dir() -> None:
    mine = item(output_dir="file:///data/out")
    copy = f"file:///data/out/dag_a/{SAFE_RUN}/edit/-1/req_0.png"
    assert mine.is_own_copy(copy)
    assert mine.is_own_copy(f"/data/out/dag_a/{SAFE_RUN}/edit/-1/outputs/3_0.png")  # a plain path is file://
    assert item(output_dir="s3://bucket/prefix").is_own_copy(
        f"s3://bucket/prefix/dag_a/{SAFE_RUN}/edit/-1/r.png"
    )
    # What an edited XCom or manifest line could name instead: a config file, another DAG's
    # or task's picture, another bucket, a climb out of the folder.
    assert not mine.is_own_copy("file:///home/airflow/airflow.cfg")
    assert not mine.is_own_copy(copy.replace("req_0.png", "airflow.cfg"))
    assert not mine.is_own_copy(copy.replace("/dag_a/", "/victim_dag/"))
    assert not mine.is_own_copy(copy.replace(SAFE_RUN, "other_run"))
    assert not mine.is_own_copy(copy.replace("/edit/-1/", "/other_task/-1/"))
    assert not mine.is_own_copy(copy.replace("/edit/-1/", "/edit/0/"))
    assert not mine.is_own_copy(copy.replace("/edit/", "/edit/../../victim_dag/") + "/x.png")
    assert not mine.is_own_copy(f"s3://data/out/dag_a/{SAFE_RUN}/edit/-1/req_0.png")
    # The run's folder inside someone else's tree (the old substring rule let this through).
    assert not mine.is_own_copy(f"file:///victims/dag_a/{SAFE_RUN}/edit/-1/req_0.png")
    # No output_dir rendered for the task: it kept nothing, so nothing is served as a copy.
    assert not item().is_own_copy(copy)


def test_a_batch_serves_only_its_own_manifest() -> None:
    batch = Item("dag_a", RUN, "batch", -1, output_dir="file:///data/out")
    own = f"file:///data/out/dag_a/{SAFE_RUN}/batch/-1/manifest.jsonl"
    assert batch.is_own_manifest(own)
    assert not batch.is_own_manifest(own.replace("/dag_a/", "/victim_dag/"))
    assert not batch.is_own_manifest(own.replace("manifest.jsonl", "ledger.jsonl"))
    assert not batch.is_own_manifest(f"file:///data/out/dag_a/{SAFE_RUN}/edit/-1/manifest.jsonl")


def test_an_output_is_read_from_its_kept_copy_or_else_from_its_url() -> None:
    own = f"file:///out/dag_a/{SAFE_RUN}/edit/-1/r_0.png"
    record = item(
        output_dir="/out",
        outputs=["https://cdn/a.png", "https://cdn/b.png"],
        stored=[{"uri": own}, {"uri": "file:///etc/passwd"}],
    )
    assert record.output_source(0) == ("stored", own)
    assert record.output_source(1) == ("url", "https://cdn/b.png")  # the odd copy is not served
    assert record.output_source(2) is None


def test_a_manifest_line_becomes_an_item_of_the_batch_task() -> None:
    batch = item(model_id="google/nano-banana/edit", manifest="file:///out/m.jsonl", state="success")
    line = item_from_manifest_line(
        batch,
        7,
        {
            "index": 7,
            "input": {"image_urls": ["https://a/7.png"], "prompt": "p"},
            "status": "failed",
            "error": "no",
        },
    )
    assert (line.item, line.inputs, line.status, line.error) == (7, ["https://a/7.png"], "failed", "no")
    assert line.failed and not line.succeeded and line.manifest is None


# -- what the view serves --------------------------------------------------------------------------


def test_only_pictures_and_videos_that_cannot_carry_script_are_served() -> None:
    assert checked_type("image/png; charset=binary", "x") == "image/png"
    assert checked_type("video/mp4", "x") == "video/mp4"
    for refused in ("image/svg+xml", "text/html", "application/octet-stream", ""):
        with pytest.raises(PictureUnavailable) as error:
            checked_type(refused, "x")
        assert error.value.status == 415
    assert looks_like_media(PNG) and looks_like_media(b"\xff\xd8\xff\xe0rest")
    assert not looks_like_media(b"[core]\ndags_folder")


def test_a_kept_copy_is_streamed_after_its_first_bytes_say_it_is_a_picture(tmp_path: Path) -> None:
    picture = tmp_path / "r_0.png"
    picture.write_bytes(PNG)
    opened = open_stored(picture.as_uri(), sha256="abc")
    assert (opened.content_type, opened.length, opened.etag) == ("image/png", len(PNG), '"abc"')
    assert b"".join(opened.chunks) == PNG  # type: ignore[arg-type]

    disguised = tmp_path / "secrets.png"
    disguised.write_text("[database]\nsql_alchemy_conn = postgresql://user:pw@db/airflow\n")
    with pytest.raises(PictureUnavailable, match="does not start like a picture"):
        open_stored(disguised.as_uri(), sha256=None)
    with pytest.raises(PictureUnavailable) as missing:
        open_stored((tmp_path / "gone.png").as_uri(), sha256=None)
    assert missing.value.status == 404
    with pytest.raises(PictureUnavailable) as large:
        open_stored(picture.as_uri(), sha256=None, max_bytes=10)
    assert large.value.status == 413


def test_an_inline_picture_is_decoded_and_an_inline_svg_refused() -> None:
    opened = open_data_uri("data:image/png;base64," + base64.b64encode(PNG).decode())
    assert b"".join(opened.chunks) == PNG  # type: ignore[arg-type]
    with pytest.raises(PictureUnavailable):
        open_data_uri("data:image/svg+xml;base64,PHN2Zz48c2NyaXB0Lz48L3N2Zz4=")


def fetch(url: str, *, api_base_url: str | None, max_bytes: int = 50_000_000) -> tuple[str, bytes]:
    fetcher = Fetcher()
    try:
        return fetcher.read(url, api_base_url=api_base_url, max_bytes=max_bytes)
    finally:
        fetcher.close()


def test_a_picture_url_is_fetched_through_the_url_policy(runcomfy_emulator: RunComfyEmulator) -> None:
    sample = f"{runcomfy_emulator.base_url}/samples/portrait.png"
    content_type, body = fetch(sample, api_base_url=runcomfy_emulator.base_url)
    assert content_type == "image/png" and looks_like_media(body)
    # Plain http to loopback only while RunComfy's connection is the emulator on loopback.
    with pytest.raises(PictureUnavailable, match="plain http://") as refused:
        fetch(sample, api_base_url=None)
    assert refused.value.status == 403
    for url in ("ftp://example.com/a.png", "https://user:pw@example.com/a.png"):
        with pytest.raises(PictureUnavailable):
            fetch(url, api_base_url=None)


def test_a_redirect_is_checked_like_the_url(runcomfy_emulator: RunComfyEmulator) -> None:
    runcomfy_emulator.add_fault("sample", "redirect", location="http://10.0.0.1/private.png")
    with pytest.raises(PictureUnavailable, match="plain http://") as refused:
        fetch(f"{runcomfy_emulator.base_url}/samples/street.png", api_base_url=runcomfy_emulator.base_url)
    assert refused.value.status == 403


def test_a_compressed_or_oversized_answer_is_not_streamed(runcomfy_emulator: RunComfyEmulator) -> None:
    sample = f"{runcomfy_emulator.base_url}/samples/street.png"
    runcomfy_emulator.add_fault("sample", "gzip_bomb", size=50_000_000)
    with pytest.raises(PictureUnavailable, match="compressed"):
        fetch(sample, api_base_url=runcomfy_emulator.base_url)
    with pytest.raises(PictureUnavailable) as large:
        fetch(sample, api_base_url=runcomfy_emulator.base_url, max_bytes=1000)
    assert large.value.status == 413


def test_an_expired_url_says_so(runcomfy_emulator: RunComfyEmulator) -> None:
    with pytest.raises(PictureUnavailable, match="temporary") as gone:
        fetch(
            f"{runcomfy_emulator.base_url}/samples/nothing-here.png", api_base_url=runcomfy_emulator.base_url
        )
    assert gone.value.status == 404


# -- the pages -------------------------------------------------------------------------------------


def test_the_page_escapes_what_tasks_wrote() -> None:
    record = item(
        state="failed",
        prompt='<script>alert("x")</script>',
        error="<img src=x onerror=alert(1)>",
        inputs=["https://a/x.png?X-Amz-Signature=secret"],
        request_id="r1",
    )
    page = html.task_page(record, prefix="/runcomfy")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page
    assert "X-Amz-Signature" not in page  # a signed URL's query is a credential: not in captions
    # One script, the theme switch, allowed by its hash: nothing a task wrote can run.
    assert page.count("<script") == 1 and f"<script>{html.THEME_SCRIPT}</script>" in page
    digest = base64.b64encode(hashlib.sha256(html.THEME_SCRIPT.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html.PAGE_CSP and "unsafe-inline'; frame" not in html.PAGE_CSP


def test_links_address_pictures_by_task_instance_never_by_url() -> None:
    record = item(
        outputs=["https://cdn/a.png"], inputs=["https://a/x.png"], status="succeeded", state="success"
    )
    page = html.task_page(record, prefix="/airflow/runcomfy")
    run = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    # The page shows thumbnails made by the API server; a click opens the picture itself.
    assert f'src="/airflow/runcomfy/picture/dag_a/{run}/edit/-1/input/0?size=view"' in page
    assert f'href="/airflow/runcomfy/picture/dag_a/{run}/edit/-1/output/0"' in page
    assert f'src="/airflow/runcomfy/picture/dag_a/{run}/edit/-1/output/0?size=view"' in page
    assert "cdn/a.png" in page and 'src="https://' not in page


# -- the connection Test fix ------------------------------------------------------------------------


def test_port_zero_is_left_out_of_a_runcomfy_test_body_only() -> None:
    from airflow_provider_runcomfy.plugins.connection_test import fix_test_body

    body = {"connection_id": "rc", "conn_type": "runcomfy", "password": "***", "host": "", "port": 0}
    fixed, conn_id = fix_test_body(json.dumps(body).encode())
    assert conn_id == "rc" and "port" not in json.loads(fixed)
    assert json.loads(fixed)["password"] == "***"
    for other in ({**body, "conn_type": "http"}, {**body, "port": 8443}, {**body, "port": False}):
        raw = json.dumps(other).encode()
        assert fix_test_body(raw)[0] == raw
    assert fix_test_body(b"not json") == (b"not json", None)


def test_the_middleware_hands_airflows_endpoint_the_fixed_body_and_the_tested_id() -> None:
    """Through a real ASGI stack: a sync endpoint (run in a thread, as Airflow's is) sees both."""
    from airflow_provider_runcomfy.plugins.connection_test import ConnectionTestFix, tested_connection_id

    app = FastAPI()

    @app.post("/api/v2/connections/test")
    async def endpoint(request: Request) -> dict[str, Any]:
        body = await request.json()
        return {"body": body, "tested": await run_in_threadpool(tested_connection_id)}

    @app.post("/api/v2/connections")
    async def other(request: Request) -> dict[str, Any]:
        return {"body": await request.json(), "tested": tested_connection_id()}

    app.add_middleware(ConnectionTestFix)
    body = {"connection_id": "rc_ui", "conn_type": "runcomfy", "port": 0, "password": "***"}

    async def post(path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://airflow"
        ) as http:
            response = await http.post(path, json=body)
            assert response.status_code == 200, response.text
            return response.json()

    tested = asyncio.run(post("/api/v2/connections/test"))
    assert tested == {"body": {k: v for k, v in body.items() if k != "port"}, "tested": "rc_ui"}
    untouched = asyncio.run(post("/api/v2/connections"))
    assert untouched == {"body": body, "tested": None}


def test_test_connection_names_the_connection_the_ui_is_testing(
    runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API tests a connection under a random stand-in id; the message names the user's one."""
    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
    from airflow_provider_runcomfy.plugins.connection_test import TESTED_CONNECTION

    stand_in = "SR6FOyy1"
    conn = {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": "revoked"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{stand_in.upper()}", json.dumps(conn))

    ok, message = RunComfyHook(stand_in).test_connection()  # no middleware: no id to name
    assert not ok and stand_in not in message and "this Airflow connection" in message

    token = TESTED_CONNECTION.set("runcomfy_prod")
    try:
        ok, message = RunComfyHook(stand_in).test_connection()
    finally:
        TESTED_CONNECTION.reset(token)
    assert not ok and stand_in not in message
    assert "Airflow connection 'runcomfy_prod'" in message and "400004" in message


def test_the_documented_cli_check_passes_a_good_token_and_names_the_connection_of_a_bad_one(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    """``airflow connections test runcomfy_default``, as README and docs/connection.md say."""
    import subprocess
    import sys

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        **runcomfy_emulator.airflow_conn_env(),
    }
    command = [sys.executable, "-m", "airflow", "connections", "test", "runcomfy_default"]
    good = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert good.returncode == 0 and "Connection success!" in good.stdout, good.stdout + good.stderr
    env["AIRFLOW_CONN_RUNCOMFY_DEFAULT"] = json.dumps(
        {"conn_type": "runcomfy", "host": runcomfy_emulator.base_url, "password": "revoked"}
    )
    bad = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1
    assert "400004" in bad.stdout and "connection 'runcomfy_default'" in " ".join(bad.stdout.split())


# -- registration ----------------------------------------------------------------------------------


def test_the_provider_registers_the_plugin_and_its_views_are_valid_for_the_ui() -> None:
    from airflow._shared.module_loading import import_string
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    info = get_provider_info()
    [plugin] = info["plugins"]
    plugin_class = import_string(plugin["plugin-class"])
    assert plugin_class.name == plugin["name"] == "runcomfy"
    views = [ExternalViewResponse.model_validate(view) for view in plugin_class.external_views]
    assert {(v.destination, v.url_route) for v in views} == {
        ("task_instance", "runcomfy-outputs"),
        ("dag_run", "runcomfy-gallery"),
    }
    assert "{DAG_ID}" in views[0].href and "{RUN_ID}" in views[0].href and "{TASK_ID}" in views[0].href
    assert [app["url_prefix"] for app in plugin_class.fastapi_apps] == ["/runcomfy"]
    for link in info["extra-links"]:
        assert import_string(link).name in ("RunComfy output", "Manifest")


def test_a_gallery_is_filtered_and_paged() -> None:
    from airflow_provider_runcomfy.plugins.app import PAGE_SIZE, Segment, paged

    items = [item(status="succeeded", state="success", request_id=f"ok{i}") for i in range(PAGE_SIZE + 3)]
    items += [item(status="failed", state="failed", request_id="bad")]
    segments = [Segment(each) for each in items]

    def href(show: str, page: int) -> str:
        return f"?show={show}&page={page}"

    shown, counts, pager = paged(segments, "all", 1, href)
    assert counts == {"all": PAGE_SIZE + 4, "succeeded": PAGE_SIZE + 3, "failed": 1}
    assert len(shown) == PAGE_SIZE and "?show=all&amp;page=2" not in pager and "?show=all&page=2" in pager
    shown, _, pager = paged(segments, "all", 99, href)  # past the end: the last page
    assert [i.request_id for i in shown][-1] == "bad" and "?show=all&page=1" in pager
    shown, _, pager = paged(segments, "failed", 1, href)
    assert [i.request_id for i in shown] == ["bad"] and pager == ""
    assert len(paged(segments, "<script>", 1, href)[0]) == PAGE_SIZE  # an unknown filter shows all


def test_a_video_output_is_shown_as_a_video() -> None:
    own = f"file:///out/dag_a/{SAFE_RUN}/edit/-1/r_0.mp4"
    record = item(
        output_dir="file:///out",
        stored=[{"uri": own, "bytes": 10}],
        outputs=["https://cdn/v.mp4"],
        status="succeeded",
    )
    page = html.task_page(record, prefix="/runcomfy")
    assert '<video src="/runcomfy/picture/dag_a/' in page and "/output/0" in page
