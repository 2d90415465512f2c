"""A user who may read only their own DAG names another DAG's files in it: every attempt is refused.

The deployment's auth manager is FAB (``apache-airflow-providers-fab``), a real one with
per-DAG permissions: ``attacker``'s role may read runs, task instances and XComs of the DAG
``runcomfy_attacker`` only; ``admin`` is FAB's Admin. Its
run is given the paths of ``runcomfy_ui``'s kept output and manifest as params, and names
them where the view reads pictures from (``dags/runcomfy_attacker.py``): an edit's input,
a batch line's input, a return value's kept copy and manifest. The view must answer 403 to
each, while the victim's own URLs still answer 403 to the attacker and 200 to its owner.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from browser_site import DAG_ID, FAB_AUTH_MANAGER, HERE, FabDeployment, Site, TokenAuth, fab_installed

pytestmark = pytest.mark.system

ATTACKER_DAG = "runcomfy_attacker"


def local_path(uri: str) -> str:
    return unquote(urlsplit(uri).path) if uri.startswith("file:") else uri


@pytest.fixture(scope="module")
def fab_site(runcomfy_emulator_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A deployment with the FAB auth manager, with one finished run of ``runcomfy_ui`` (the victim)."""
    if not fab_installed():
        pytest.fail(
            "apache-airflow-providers-fab is not installed: `.venv/bin/pip install -c "
            "requirements/constraints.txt apache-airflow-providers-fab` (the test extra pins it)"
        )
    work = tmp_path_factory.mktemp("fab-site")
    passwords = {user: secrets.token_urlsafe(12) for user in ("admin", "attacker")}
    env = {"AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER, **runcomfy_emulator_server.airflow_conn_env()}
    deployment = FabDeployment(HERE / "dags", env, parallelism=4, start_timeout=600)
    deployment.fab_users = {
        "admin": {"role": "Admin", "resources": [], "password": passwords["admin"]},
        "attacker": {
            "role": "OnlyTheAttackerDag",
            "resources": [f"DAG:{ATTACKER_DAG}", "DAG Runs", "Task Instances", "XComs"],
            "password": passwords["attacker"],
        },
    }
    deployment.auth = TokenAuth(deployment, "admin", passwords["admin"])
    deployment.env_extra["PYTHONPATH"] = os.pathsep.join(
        [str(deployment.home / "pythonpath"), str(HERE), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    deployment.start()
    try:
        site = Site(deployment, passwords, runcomfy_emulator_server)
        deployment.wait_for_dag(DAG_ID, timeout=180)
        site.run_id = deployment.trigger_dag(
            DAG_ID,
            conf={"emulator": runcomfy_emulator_server.base_url, "output_dir": (work / "outputs").as_uri()},
        )
        deployment.wait_for_run(DAG_ID, site.run_id, timeout=400)
        yield site
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def stolen(fab_site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The attacker's finished run, given the victim's kept copy and manifest (as plain paths)."""
    site = fab_site
    deployment = site.deployment
    where, uri = victim_copy(site)
    batch = deployment.xcom(DAG_ID, site.run_id, "batch")
    copy, manifest = local_path(uri), local_path(batch["manifest"])
    assert Path(copy).is_file() and Path(manifest).is_file()
    run_id = deployment.trigger_dag(
        ATTACKER_DAG,
        conf={
            "emulator": site.emulator.base_url,
            "output_dir": tmp_path_factory.mktemp("attacker").as_uri(),
            "victim_copy": copy,
            "victim_manifest": manifest,
        },
    )
    deployment.wait_for_dag(ATTACKER_DAG, timeout=180)
    deployment.wait_for_run(ATTACKER_DAG, run_id, timeout=400)
    return {"run_id": run_id, "copy": copy, "manifest": manifest, "where": where}


def victim_copy(site: Site) -> tuple[str, str]:
    """``("{task_id}/{map_index}", uri)`` of a kept copy in the victim's run."""
    for task_id, index in (("edit", -1), ("enrich", 0), ("enrich", 1)):
        try:
            value = site.deployment.xcom(DAG_ID, site.run_id, task_id, map_index=index)
        except Exception:  # that task failed: no return value
            continue
        if isinstance(value, dict) and value.get("stored"):
            return f"{task_id}/{index}", str(value["stored"][0]["uri"])
    pytest.fail("no task of the victim's run kept a copy: see the deployment's logs")


def test_every_cross_dag_attempt_gets_403(fab_site: Site, stolen: dict[str, Any]) -> None:
    site = fab_site
    run = quote(stolen["run_id"], safe="")

    def mine(view: str) -> str:
        return f"/runcomfy/{view}/{ATTACKER_DAG}/{run}"

    attempts = {
        "an edit's input naming the victim's copy": mine("picture") + "/steal_input/-1/input/0",
        "its thumbnail": mine("picture") + "/steal_input/-1/input/0?size=thumb",
        "a batch line's input naming the victim's copy": mine("picture") + "/steal_lines/-1/input/0?item=0",
        "a return value's kept copy": mine("picture") + "/fake_result/-1/output/0",
        "its thumbnail ": mine("picture") + "/fake_result/-1/output/0?size=thumb",
        "a return value's manifest (the Manifest link)": mine("manifest") + "/fake_result?map_index=-1",
        "that manifest's lines as a page": mine("outputs") + "/fake_result?map_index=-1",
        "one line of that manifest": mine("outputs") + "/fake_result?map_index=-1&item=0",
        "a picture of that manifest's line": mine("picture") + "/fake_result/-1/input/0?item=0",
    }
    victim_run = quote(site.run_id, safe="")
    victims = {
        "the victim's own picture": f"/runcomfy/picture/{DAG_ID}/{victim_run}/{stolen['where']}/output/0",
        "the victim's own manifest": f"/runcomfy/manifest/{DAG_ID}/{victim_run}/batch?map_index=-1",
        "the victim's gallery": f"/runcomfy/gallery/{DAG_ID}/{victim_run}",
    }
    attacker = {"Authorization": f"Bearer {site.token('attacker')}"}
    admin = {"Authorization": f"Bearer {site.token('admin')}"}
    secret = Path(stolen["copy"]).read_bytes()[:4096]
    lines = Path(stolen["manifest"]).read_bytes()[:200]
    answers, leaks, owner = {}, [], {}
    with httpx.Client(base_url=site.base_url, timeout=120) as http:
        for name, path in {**attempts, **victims}.items():
            answer = http.get(path, headers=attacker)
            answers[name] = answer.status_code
            if secret in answer.content or lines in answer.content:
                leaks.append(name)
        # The victim's files are real and served to whoever may read that DAG.
        for name, path in victims.items():
            answer = http.get(path, headers=admin)
            owner[name] = (answer.status_code, answer.text[:200] if answer.status_code != 200 else "")
        # The attacker's own pages still render (200): they just show nothing of the victim's.
        gallery = http.get(mine("gallery"), headers=attacker)
        edit_page = http.get(mine("outputs") + "/steal_input?map_index=-1", headers=attacker)
    print(f"[figure] cross-DAG answers to the attacker: {answers}; to the owner: {owner}")
    assert not leaks, leaks
    assert answers == {name: 403 for name in answers}, answers
    assert all(code == 200 for code, _ in owner.values()), owner
    for page in (gallery, edit_page):
        assert page.status_code == 200 and secret not in page.content and lines not in page.content
    assert "a storage path named as an input is not shown" in edit_page.text
    assert "The manifest is not where the batch keeps" in gallery.text
