"""Provider metadata that Airflow's ProvidersManager reads through the entry point.

Kept free of imports so that provider discovery (which every Airflow process
does at start-up) costs nothing beyond building this dict.
"""

from __future__ import annotations

from typing import Any

_INTEGRATION = "RunComfy"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider; ``package-name`` must equal the distribution name."""
    from airflow_provider_runcomfy import __version__

    return {
        "package-name": "airflow-provider-runcomfy",
        "name": "RunComfy",
        "description": "Run RunComfy Model API image and video models from Airflow (https://www.runcomfy.com/).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://docs.runcomfy.com/",
                "tags": ["service"],
            }
        ],
        "operators": _modules(
            "airflow_provider_runcomfy.operators.runcomfy", "airflow_provider_runcomfy.operators.batch"
        ),
        "sensors": _modules("airflow_provider_runcomfy.sensors.runcomfy"),
        "hooks": _modules("airflow_provider_runcomfy.hooks.runcomfy"),
        "triggers": _modules(
            "airflow_provider_runcomfy.triggers.runcomfy", "airflow_provider_runcomfy.triggers.batch"
        ),
        # Airflow loads provider plugins from here only with ``[core] lazy_discover_providers = False``;
        # the ``airflow.plugins`` entry point loads it in every setup (as the OpenLineage provider does).
        "plugins": [
            {"name": "runcomfy", "plugin-class": "airflow_provider_runcomfy.plugins.plugin.RunComfyPlugin"}
        ],
        "extra-links": [
            "airflow_provider_runcomfy.operators.links.RunComfyOutputLink",
            "airflow_provider_runcomfy.operators.links.RunComfyManifestLink",
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider_runcomfy.hooks.runcomfy.RunComfyHook",
                "hook-name": "RunComfy",
                "connection-type": "runcomfy",
                "conn-fields": {
                    "connect_timeout": _optional("Connect timeout (seconds)", "number", default=10),
                    "read_timeout": _optional("Read timeout (seconds)", "number", default=60),
                    "max_retries": _optional("Retries of status/result/cancel calls", "integer", default=4),
                    "max_in_flight": _optional(
                        "Requests on the wire at once per triggerer (empty: the default)",
                        "integer",
                        minimum=1,
                    ),
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login", "extra", "description"],
                    "relabeling": {"password": "API token", "host": "Base URL"},
                    "placeholders": {
                        "password": "token from your RunComfy profile page",
                        "host": "https://model-api.runcomfy.net",
                    },
                },
            }
        ],
    }


def _modules(*modules: str) -> list[dict[str, Any]]:
    """The entry of this integration that lists ``modules``."""
    return [{"integration-name": _INTEGRATION, "python-modules": list(modules)}]


def _optional(label: str, json_type: str, **schema: Any) -> dict[str, Any]:
    """A connection form field that may be left empty (the client's default then applies)."""
    return {"label": label, "schema": {"type": [json_type, "null"], **schema}}
