"""OpenLineage naming of RunComfy's pictures, copies and jobs: datasets and run facets.

The single-job operators (``operators.lineage.RunComfyLineageMixin``) and the batch
(``operators._batch_finishing.BatchLineage``) both name inputs, kept copies and requests the same
way, so the naming lives here, below both. Nothing is imported from OpenLineage until
a facet is built (the listener asks only where the openlineage provider is installed).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_runcomfy.client.redact import redact_text

#: ``externalQuery.source`` of RunComfy requests.
LINEAGE_SOURCE = "runcomfy"
#: The most input datasets a batch reports (its first distinct input pictures): an event stays small
#: whatever the number of items. Inputs read from a JSON-lines file are that one file.
MAX_BATCH_LINEAGE_INPUTS = 100
#: The counts of a batch's return value that its ``runcomfyBatch`` run facet carries.
BATCH_COUNTS = (
    "total",
    "succeeded",
    "failed",
    "cancelled",
    "invalid",
    "unknown",
    "not_submitted",
    "in_flight",
)


def dataset_name(location: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a picture's location in OpenLineage's naming, or None for inline data."""
    location = location.strip()
    if not location or location.startswith("data:"):
        return None
    try:
        parts = urlsplit(location)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed URL (an unclosed "[", a port that is not a number) is no dataset
        return None
    scheme = parts.scheme.lower()
    if scheme in ("file", "local"):
        return "file", parts.path
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive): absolute ones only
        return ("file", location) if location.startswith("/") or len(scheme) == 1 else None
    host = parts.hostname or ""
    return f"{scheme}://{host}{port}", (parts.path or "/") if scheme in (
        "http",
        "https",
    ) else parts.path.lstrip("/")


def runcomfy_run_facet(**fields: Any) -> Any:
    """The ``runcomfy`` run facet: request id, model, RunComfy status, cost (USD) when known."""
    return _facet_classes()[0](**fields)


@cache
def _facet_classes() -> tuple[Any, Any]:
    # Defined on first use: OpenLineage is imported only when its listener asks for lineage.
    import attrs
    from airflow.providers.common.compat.openlineage.facet import RunFacet

    @attrs.define
    class RunComfyRunFacet(RunFacet):
        """A RunComfy request behind this task run."""

        request_id: str
        model_id: str | None = None
        status: str | None = None
        cost_usd: float | None = None

    @attrs.define
    class RunComfyBatchRunFacet(RunFacet):
        """A batch of RunComfy requests behind this task run: how many went where, what it cost."""

        model_id: str
        #: Items by manifest status, and ``submitted``: every item sent to RunComfy.
        counts: dict[str, int]
        cost_usd: float | None = None
        stopped: str | None = None
        stop_reason: str | None = None
        manifest: str | None = None

    return RunComfyRunFacet, RunComfyBatchRunFacet


def batch_run_facet(**fields: Any) -> Any:
    """The ``runcomfyBatch`` run facet: model, counts by status, cost, why it stopped, the manifest.

    Its texts leave the deployment (to the lineage backend): why a batch stopped can quote
    RunComfy's error, and with it a pre-signed URL, so they are redacted here as well.
    """
    texts = ("stopped", "stop_reason", "manifest")
    cleaned = {k: redact_text(v) if k in texts and isinstance(v, str) else v for k, v in fields.items()}
    return _facet_classes()[1](**cleaned)


def location(uri: Any) -> str | None:
    """A storage URI without what may be a credential (user info, a query); None if not one."""
    named = dataset_name(uri) if isinstance(uri, str) else None
    if not named:
        return None
    namespace, name = named
    return name if namespace == "file" else namespace + ("" if name.startswith("/") else "/") + name


def datasets(dataset_class: Any, locations: Iterable[Any]) -> list[Any]:
    found = []
    for location in locations:
        named = dataset_name(location) if isinstance(location, str) else None
        if named and all(named) and dataset_class(namespace=named[0], name=named[1]) not in found:
            found.append(dataset_class(namespace=named[0], name=named[1]))
    return found
