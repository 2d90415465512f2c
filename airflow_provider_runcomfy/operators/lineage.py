"""OpenLineage for the RunComfy operators: which pictures went in, which copies came out, which job.

When the ``apache-airflow-providers-openlineage`` provider is installed, its
listener calls ``get_openlineage_facets_on_complete`` (and ``..._on_failure``)
on the operator after the task ends. The mixin answers with:

- **inputs**: the input pictures as datasets -- an https URL as namespace
  ``https://host`` and name ``/path`` (the query, which may hold a signature,
  is dropped), a storage path as ``s3://bucket`` + key, a local file as
  ``file`` + path; ``data:`` URIs are not datasets and are left out;
- **outputs**: the copies kept in ``output_dir``, named the same way (RunComfy's
  own URLs are temporary, so they are outputs only when no copy was kept);
- **run facets**: ``externalQuery`` with the RunComfy request id (the standard
  facet for "the id of this run in another system") and ``runcomfy`` with the
  model, RunComfy's status and the cost when known.

The batch operator answers with its input source, its ``output_dir`` and a
``runcomfyBatch`` run facet of counts (``operators._batch_finishing.BatchLineage``). The
naming both use is ``outputs.lineage``'s (re-exported here for older imports).
Nothing is imported from OpenLineage until the listener asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_runcomfy.outputs.lineage import (
    BATCH_COUNTS,
    LINEAGE_SOURCE,
    MAX_BATCH_LINEAGE_INPUTS,
    batch_run_facet,
    dataset_name,
    datasets,
    location,
    runcomfy_run_facet,
)

__all__ = [
    "BATCH_COUNTS",
    "LINEAGE_SOURCE",
    "MAX_BATCH_LINEAGE_INPUTS",
    "RunComfyLineageMixin",
    "batch_run_facet",
    "dataset_name",
    "datasets",
    "location",
    "runcomfy_run_facet",
]


class RunComfyLineageMixin:
    """``get_openlineage_facets_on_complete``/``_on_failure`` for the RunComfy model operators.

    The inputs come from the task's rendered fields (``image_url``, ``image_urls``, ``input``);
    the request and its outcome are recorded on the operator as the task concludes
    (``conclude``/``finish`` of ``RunComfyWaitMixin``), because the OpenLineage listener
    builds its events in a forked process where asking for XComs would hang.
    Put it before ``RunComfyWaitMixin`` in the bases.
    """

    task_id: str
    #: What the task returned for a succeeded request (``finish``), or None.
    _lineage_result: Mapping[str, Any] | None = None
    #: The outcome the task concluded with (success or not), or None before it did.
    _lineage_outcome: Any = None

    def conclude(self, context: Any, outcome: Any) -> Any:
        """Remember the outcome (for the lineage of a failure too), then conclude as usual."""
        self._lineage_outcome = outcome
        return super().conclude(context, outcome)  # type: ignore[misc]

    def finish(self, context: Any, outcome: Any) -> dict[str, Any]:
        """Remember the return value (the kept copies are in it), then return it."""
        result: dict[str, Any] = super().finish(context, outcome)  # type: ignore[misc]
        self._lineage_result = result
        return result

    def lineage_inputs(self) -> list[str]:
        """The input pictures of the (rendered) task."""
        from airflow_provider_runcomfy.sources.images import input_images

        build = getattr(self, "build_input", None)
        try:
            # The model input from the rendered fields (the typed operators build it from theirs).
            fields: Mapping[str, Any] = build() if callable(build) else {}
        except Exception:  # lineage never fails a task: fall back to the fields as they are
            fields = {name: getattr(self, name, None) for name in ("image_url", "image_urls", "input")}
        return input_images(fields)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Inputs, kept copies and the request id of a finished task (see the module docstring)."""
        return self._lineage_of(self._lineage_result or self._outcome_fields())

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """Inputs and the request id of a failed task (it kept no copies)."""
        return self._lineage_of({k: v for k, v in self._outcome_fields().items() if k != "outputs"})

    def _outcome_fields(self) -> dict[str, Any]:
        outcome = self._lineage_outcome
        if outcome is None:
            return {}
        return {
            "request_id": outcome.request_id,
            "model_id": outcome.model_id,
            "status": str(outcome.kind),
            "cost_usd": outcome.cost_usd,
            "outputs": list(outcome.outputs),
        }

    def _lineage_of(self, result: Mapping[str, Any]) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset, ExternalQueryRunFacet
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs = datasets(Dataset, self.lineage_inputs())
        stored = [copy.get("uri") for copy in result.get("stored") or [] if isinstance(copy, Mapping)]
        outputs = datasets(
            Dataset, [uri for uri in stored if isinstance(uri, str)] or result.get("outputs") or []
        )
        run_facets: dict[str, Any] = {}
        request_id = result.get("request_id")
        if isinstance(request_id, str) and request_id:
            run_facets["externalQuery"] = ExternalQueryRunFacet(
                externalQueryId=request_id, source=LINEAGE_SOURCE
            )
            run_facets["runcomfy"] = runcomfy_run_facet(
                request_id=request_id,
                model_id=result.get("model_id") or getattr(self, "model_id", None),
                status=result.get("status"),
                cost_usd=result.get("cost_usd"),
            )
        return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)
