"""Extra links of the RunComfy operators: the task's outputs view and a batch's manifest.

Airflow 3 works a link out in the worker when the task ends and keeps it as an
XCom (``_link_<class name>``); the UI shows it on the task instance's Details
tab, and opens a link of its own origin in the same window. So "RunComfy
output" opens the task instance's "RunComfy outputs" tab in Airflow's UI (the
provider's plugin), and "Manifest" the manifest, streamed by the API server;
both only for users allowed to read the DAG.
RunComfy's own output URLs are not linked: they expire, and a signed URL is a
credential that does not belong in the UI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the API server mounts the outputs view (``plugins.plugin.URL_PREFIX``).
VIEW_PREFIX = "/runcomfy"
#: The ``url_route`` of the task instance tab (``plugins.plugin.RunComfyPlugin.external_views``).
OUTPUTS_TAB = "runcomfy-outputs"


def view_url(view: str, ti_key: TaskInstanceKey) -> str:
    """``{[api] base_url}/runcomfy/{view}/{dag_id}/{run_id}/{task_id}?map_index=...`` of a task instance."""
    path = "/".join(quote(str(part), safe="") for part in (ti_key.dag_id, ti_key.run_id, ti_key.task_id))
    return f"{_base_url()}{VIEW_PREFIX}/{view}/{path}?{urlencode({'map_index': ti_key.map_index})}"


def outputs_tab_url(ti_key: TaskInstanceKey) -> str:
    """The task instance's "RunComfy outputs" tab in Airflow's UI (``plugins.plugin`` adds the tab)."""
    dag, run, task = (quote(str(part), safe="") for part in (ti_key.dag_id, ti_key.run_id, ti_key.task_id))
    mapped = f"/mapped/{ti_key.map_index}" if ti_key.map_index is not None and ti_key.map_index >= 0 else ""
    return f"{_base_url()}/dags/{dag}/runs/{run}/tasks/{task}{mapped}/plugin/{OUTPUTS_TAB}"


def _base_url() -> str:
    from airflow_provider_runcomfy.compat import airflow_conf

    return (airflow_conf().get("api", "base_url", fallback="") or "").rstrip("/")


class RunComfyOutputLink(BaseOperatorLink):
    """ "RunComfy output": the task instance's inputs beside its outputs (a batch: its lines), in Airflow's UI."""

    name = "RunComfy output"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow_provider_runcomfy.compat import HAS_PLUGIN_TABS

        # Airflow 3.0 shows no plugin tabs: the link opens the page the API server serves on its own.
        return outputs_tab_url(ti_key) if HAS_PLUGIN_TABS else view_url("outputs", ti_key)


class RunComfyManifestLink(BaseOperatorLink):
    """ "Manifest": a batch task's ``manifest.jsonl`` (one JSON line per input), streamed by the API server."""

    name = "Manifest"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return view_url("manifest", ti_key)
