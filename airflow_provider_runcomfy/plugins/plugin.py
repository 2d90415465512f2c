"""``RunComfyPlugin``: what the provider adds to Airflow's API server and UI.

Airflow imports plugins in most of its processes (scheduler, workers, DAG
processor), so this module imports nothing but ``AirflowPlugin``: the web
application is built by the API server on its first request to ``/runcomfy``.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from airflow_provider_runcomfy.plugins.connection_test import ConnectionTestFix

#: Where the API server mounts the outputs view.
URL_PREFIX = "/runcomfy"
#: The same, as the browser sees it when Airflow is served under a path (``[api] base_url``).
BROWSER_PREFIX = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/") + URL_PREFIX


class LazyApp:
    """An ASGI app that builds the outputs view on its first request (FastAPI is not imported before)."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from airflow_provider_runcomfy.plugins.app import create_app

                    self._app = create_app()
        await self._app(scope, receive, send)


class RunComfyPlugin(AirflowPlugin):
    """The outputs view (a task instance tab and a DAG run tab) and the connection *Test* fix."""

    name = "runcomfy"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "RunComfy outputs"}]
    fastapi_root_middlewares = [{"middleware": ConnectionTestFix, "name": "RunComfy connection test"}]
    external_views = [
        {
            "name": "RunComfy outputs",
            "href": f"{BROWSER_PREFIX}/outputs/{{DAG_ID}}/{{RUN_ID}}/{{TASK_ID}}?map_index={{MAP_INDEX}}",
            "destination": "task_instance",
            "url_route": "runcomfy-outputs",
        },
        {
            "name": "RunComfy gallery",
            "href": f"{BROWSER_PREFIX}/gallery/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "runcomfy-gallery",
        },
    ]
