"""The browser tests' site: a real Airflow deployment with logins, the emulator, Chromium.

The deployment is the system tests' (``tests/system/deployment.py``, default local
topology: API server, scheduler, DAG processor, triggerer on 127.0.0.1), started with
real logins instead of the system tests' all-admins mode: users ``admin`` (admin) and
``outsider`` (viewer, kept from the DAG ``runcomfy_ui`` by ``runcomfy_browser_auth``),
connection testing enabled, and the session's RunComfy emulator as ``runcomfy_default``.

The browser is the distribution's Chromium (``/usr/bin/chromium``, installed by
``scripts/system-packages``), driven by Playwright's Python package; no browser is
downloaded. (A module of its own, not ``conftest``: the tests import from it, and
``conftest`` is a name every test folder has.)
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "system"))  # deployment.py

from deployment import AirflowDeployment  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
#: Launch flags for a closed network: nothing phones home, nothing updates itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DAG_ID = "runcomfy_ui"
USERS = {"admin": "admin", "outsider": "viewer", "attacker": "viewer"}


class TokenAuth(httpx.Auth):
    """Bearer token of a SimpleAuthManager user for REST calls, fetched (again) on a 401."""

    def __init__(self, deployment: AirflowDeployment, user: str, password: str) -> None:
        self.deployment, self.user, self.password = deployment, user, password
        self.token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        for attempt in range(2):
            if self.token is None or attempt:
                self.token = fetch_token(self.deployment.base_url, self.user, self.password)
            request.headers["Authorization"] = f"Bearer {self.token}"
            response = yield request
            if response.status_code != 401:
                return


def fetch_token(base_url: str, user: str, password: str) -> str | None:
    """A JWT for ``user`` from ``POST /auth/token``, or None while the API server does not answer."""
    try:
        response = httpx.post(
            f"{base_url}/auth/token", json={"username": user, "password": password}, timeout=30
        )
    except httpx.TransportError:
        return None
    return str(response.json()["access_token"]) if response.status_code in (200, 201) else None


class LoginDeployment(AirflowDeployment):
    """The system tests' deployment with logins on: its REST client logs in as ``admin``."""

    auth: TokenAuth | None = None

    @property
    def api(self) -> httpx.Client:
        client = super().api
        client.auth = self.auth
        # A machine shared with other test runs can keep the API server busy for more than 30 s.
        client.timeout = httpx.Timeout(120.0)
        return client


#: The FAB auth manager (``apache-airflow-providers-fab``): real per-DAG permissions.
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"

#: Run in the deployment's environment after ``db migrate``: FAB roles and users, in one process.
#: ``attacker`` may read runs, task instances and XComs of one DAG only -- FAB's own model: the
#: sub-entity permissions are global, the ``DAG:<dag_id>`` permission scopes them.
FAB_USERS_SCRIPT = """
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

users = json.loads(sys.argv[1])
with get_application_builder() as appbuilder:
    sm = appbuilder.sm
    for name, spec in users.items():
        role = sm.find_role(spec["role"])
        if role is None:
            role = sm.add_role(spec["role"])
            for resource in spec["resources"]:
                sm.add_permission_to_role(role, sm.create_permission("can_read", resource))
        if sm.find_user(username=name) is None:
            assert sm.add_user(name, name, "test", f"{name}@example.com", role, spec["password"]), name
"""


class FabDeployment(LoginDeployment):
    """A deployment whose auth manager is FAB, with users made before anything asks for a token.

    :param fab_users: ``{user: {"role": ..., "resources": [...], "password": ...}}``; a role that
        exists already (``Admin``) is used as it is.
    """

    fab_users: dict[str, dict[str, Any]] = {}

    def _migrate(self) -> None:
        import json
        import subprocess

        super()._migrate()  # type: ignore[misc]
        result = subprocess.run(
            [sys.executable, "-c", FAB_USERS_SCRIPT, json.dumps(self.fab_users)],
            env=self._env,  # type: ignore[attr-defined]
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"creating the FAB users failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            )


def fab_installed() -> bool:
    try:
        importlib.metadata.version("apache-airflow-providers-fab")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def plugin_entry_point_installed() -> bool:
    """Whether the installed metadata has the ``airflow.plugins`` entry point of the provider."""
    return any(
        ep.value.startswith("airflow_provider_runcomfy.")
        for ep in importlib.metadata.entry_points(group="airflow.plugins")
    )


class Site:
    """The deployment as a logged-in user sees it: passwords, tokens, the finished run."""

    def __init__(self, deployment: AirflowDeployment, passwords: dict[str, str], emulator: Any) -> None:
        self.deployment = deployment
        self.passwords = passwords
        self.emulator = emulator
        self.base_url = deployment.base_url
        self.run_id = ""

    def token(self, user: str) -> str:
        token = fetch_token(self.base_url, user, self.passwords[user])
        assert token, f"could not log in as {user}"
        return token

    def view_path(self, task_id: str, map_index: int = -1) -> str:
        return f"/runcomfy/outputs/{DAG_ID}/{self.run_id}/{task_id}?map_index={map_index}"


def log_in(page: Any, site: Site, user: str = "admin") -> None:
    """Log in through Airflow's login form, as a person would."""
    page.goto("/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(site.passwords[user])
    page.get_by_role("button", name="Sign in").click()
    deadline = time.monotonic() + 30
    while "login" in page.url and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert "login" not in page.url, f"login as {user} failed: still on {page.url}"
