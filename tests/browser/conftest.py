"""Fixtures for the browser tests (see ``browser_site``): the deployment, Chromium, a page per test.

Screenshots go under each test's tmp dir; their paths are printed.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from browser_site import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DAG_ID,
    HERE,
    USERS,
    LoginDeployment,
    Site,
    TokenAuth,
    plugin_entry_point_installed,
)


@pytest.fixture(scope="session")
def site(runcomfy_emulator_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The deployment, started once for all the browser tests, with one finished run of ``runcomfy_ui``."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/system-packages (it installs the distro's Chromium)")
    work = tmp_path_factory.mktemp("browser-site")
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    (work / "passwords.json").write_text(json.dumps(passwords))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(work / "passwords.json"),
        "AIRFLOW__CORE__AUTH_MANAGER": "runcomfy_browser_auth.DagScopedAuthManager",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        **runcomfy_emulator_server.airflow_conn_env(),
    }
    # The plugin must load through the package's ``airflow.plugins`` entry point, as in a
    # user's deployment with Airflow's default lazy provider discovery.
    assert plugin_entry_point_installed(), (
        "re-run `pip install -e .`: the airflow.plugins entry point is missing"
    )
    deployment = LoginDeployment(HERE / "dags", env, parallelism=4, start_timeout=600)
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


@pytest.fixture(scope="session")
def browser(site: Site) -> Iterator[Any]:
    """Chromium through Playwright (sync API), closed after the session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, site: Site, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser page (its own cookies) on the deployment; ``page.shot(name)`` saves a screenshot."""
    context = browser.new_context(base_url=site.base_url, viewport={"width": 1400, "height": 1000})
    # Generous: the machine may be shared with other deployments and test runs.
    context.set_default_timeout(120_000)
    context.set_default_navigation_timeout(120_000)
    page = context.new_page()

    def shot(name: str, target: Any = None) -> Path:
        path = tmp_path / f"{name}.png"
        (target or page).screenshot(path=str(path), full_page=target is None)
        print(f"[screenshot] {path}")
        return path

    page.shot = shot
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Any:
    """``record_figure(label, value, unit)``: print a measured figure (not an assertion)."""

    def record(label: str, value: float, unit: str = "") -> None:
        print(f"[figure] {request.node.name}: {label}: {value:.3f}{unit}")

    return record
