"""How a batch ends at the Airflow edge: the manifest's XCom, one summary line, the verdict, the lineage.

``BatchFinishing`` and ``BatchLineage`` are built by ``RunComfyBatchOperator`` with what they
use as constructor arguments, kept apart so the operator reads as the cycle it runs. What the
batch decides is ``batch.report``'s (the rows, the counts, the failure policy as a message or
None); this module only turns that into Airflow's terms (XCom, ``AirflowFailException``). The
OpenLineage naming is ``outputs.lineage``'s, imported only when the OpenLineage listener asks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.client.errors import JobTimeoutError
from airflow_provider_runcomfy.compat import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.batch.engine import BatchRun

#: Items listed one by one in the log (invalid ones, failed ones); the rest are in the manifest.
LOGGED_ITEMS = 20

log = logging.getLogger(__name__)


@dataclass
class BatchFinishing:
    """The manifest, the last log lines and the verdict of the batch operator.

    :param log: the task's log.
    :param timeout: the batch's ``timeout`` (named in the timeout's message).
    :param max_failed_items: the failure policy's limit (``RunComfyBatchOperator``).
    """

    log: Any
    timeout: float | None
    max_failed_items: int | None
    #: The return value of the last ``finish`` (for OpenLineage: the listener reads no XCom).
    result: dict[str, Any] | None = field(default=None, init=False)

    def write_manifest(self, context: Context, run: BatchRun) -> str:
        """Write ``manifest.jsonl`` (failure or not) and push its URI as XCom ``manifest``."""
        from airflow_provider_runcomfy.batch.report import write_batch_manifest

        run.record_copies(wait=True)  # the copies still going on are in the manifest, kept or failed
        uri = write_batch_manifest(run)
        try:
            context["ti"].xcom_push(key="manifest", value=uri)
        except Exception as error:  # the manifest is written; its XCom is a convenience
            self.log.warning("Could not push the manifest's URI to XCom: %s", error)
        return uri

    def finish(self, context: Context, run: BatchRun, *, timed_out: bool = False) -> dict[str, Any]:
        """Write the manifest, say what happened, then return the summary or fail by the failure policy."""
        from airflow_provider_runcomfy.batch.report import (
            describe_counts,
            failure_message,
            summary,
            timeout_message,
        )

        uri = self.write_manifest(context, run)
        result = summary(run, uri)
        self.result = result
        counts = describe_counts(result)
        cost = f"; cost ${result['cost_usd']:.4f}" if result["cost_usd"] is not None else ""
        self.log.info(
            "Batch of %d items: %s%s. Manifest: %s", result["total"], counts or "nothing done", cost, uri
        )
        if run.stopped == "budget":
            self.log.warning("The batch stopped submitting by its budget: %s.", result["stop_reason"])
        self._log_failures(run)
        if timed_out:  # a RunComfyError: Airflow retries it, and the retry resumes the batch
            raise JobTimeoutError(timeout_message(result, self.timeout))
        message = failure_message(
            result, stopped=run.stopped, stop_message=run.stop_message, max_failed_items=self.max_failed_items
        )
        if message is not None:
            raise AirflowFailException(message)
        return result

    def report_invalid(self, run: BatchRun, invalid: int) -> None:
        """Log why the first invalid items are not submitted (all of them are in the manifest)."""
        from airflow_provider_runcomfy.batch import ledger as L

        shown = run.records(L.INVALID)[:LOGGED_ITEMS]
        for item, record in shown:
            self.log.warning("Item %d is invalid and is not submitted: %s", item.index, record.error)
        if invalid > len(shown):
            self.log.warning("... and %d more invalid items (see the manifest).", invalid - len(shown))

    def _log_failures(self, run: BatchRun) -> None:
        from airflow_provider_runcomfy.batch import ledger as L

        bad = run.records(L.FAILED, L.CANCELLED, L.UNKNOWN)
        for item, record in bad[:LOGGED_ITEMS]:
            self.log.warning("Item %d (%s) %s: %s", item.index, record.request_id, record.state, record.error)
        if len(bad) > LOGGED_ITEMS:
            self.log.warning(
                "... and %d more items that did not succeed (see the manifest).", len(bad) - LOGGED_ITEMS
            )


@dataclass(frozen=True)
class BatchLineage:
    """``get_openlineage_facets_on_complete`` for ``RunComfyBatchOperator`` (also used on failure).

    - **inputs**: the JSON-lines file when ``inputs`` names one (its lines are not read again),
      else the distinct input pictures of the items, the first ``MAX_BATCH_LINEAGE_INPUTS``;
    - **outputs**: ``output_dir``, under which the manifest and the kept copies are (one dataset,
      the same for every run; the run facet names this run's manifest);
    - **run facet** ``runcomfyBatch``: the model, the counts by status and ``submitted`` (every item
      sent to RunComfy, ``unknown`` ones included), the cost, why it stopped, the manifest's URI.

    Pre-signed URLs never appear: the batch signs files only for the submit and keeps them
    nowhere, and a URL's query (where a signature lives) is dropped from dataset names.
    Lineage never fails the task: any error is logged and no lineage is reported.

    :param model_id: the rendered ``model_id``.
    :param inputs: the rendered ``inputs``.
    :param output_dir: the rendered ``output_dir``.
    :param result: the batch's return value (``BatchFinishing.result``); None before it ended.
    """

    model_id: str
    inputs: Any
    output_dir: Any
    result: dict[str, Any] | None

    def facets(self) -> Any:
        """Input source, ``output_dir`` and counts of the batch (see the class docstring)."""
        try:
            return self._batch_lineage()
        except Exception:
            log.warning("Could not build the OpenLineage facets of this batch.", exc_info=True)
            return None

    def batch_lineage_inputs(self) -> list[str]:
        """The input source of the batch: its JSON-lines file, or its first distinct input pictures."""
        from airflow_provider_runcomfy.outputs.lineage import MAX_BATCH_LINEAGE_INPUTS
        from airflow_provider_runcomfy.sources.images import input_images

        inputs = self.inputs
        if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Iterable):
            return [str(inputs)] if inputs else []
        found: list[str] = []
        for one in inputs if not isinstance(inputs, Mapping) else ():
            for location in input_images(one) if isinstance(one, Mapping) else ():
                if location not in found:
                    found.append(location)
                    if len(found) >= MAX_BATCH_LINEAGE_INPUTS:
                        return found
        return found

    def _batch_lineage(self) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_runcomfy.outputs.lineage import (
            BATCH_COUNTS,
            batch_run_facet,
            datasets,
            location,
        )

        run_facets: dict[str, Any] = {}
        result = self.result
        if result is not None:
            counts = {name: int(result.get(name) or 0) for name in BATCH_COUNTS}
            counts["submitted"] = counts["total"] - counts["invalid"] - counts["not_submitted"]
            run_facets["runcomfyBatch"] = batch_run_facet(
                model_id=self.model_id,
                counts=counts,
                cost_usd=result.get("cost_usd"),
                stopped=result.get("stopped"),
                stop_reason=result.get("stop_reason"),
                manifest=location(result.get("manifest")),
            )
        output_dir = str(self.output_dir) if self.output_dir else ""
        return OperatorLineage(
            inputs=datasets(Dataset, self.batch_lineage_inputs()),
            outputs=datasets(Dataset, [output_dir]),
            run_facets=run_facets,
        )
