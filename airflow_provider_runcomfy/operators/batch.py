"""``RunComfyBatchOperator``: one task instance runs one model over many inputs, at RunComfy's speed.

RunComfy has no batch API, so this operator does client-side what a vendor batch
API does server-side: it keeps up to ``max_in_flight`` jobs at RunComfy, records
every item in a durable ledger in ``output_dir`` (intent before the paid submit,
request id right after), waits in the triggerer between refills, copies the
outputs, and ends with ``manifest.jsonl`` and a small return value.

The cycle of one worker part: read the ledger -> record the outcomes the trigger
brought -> submit ready items up to ``max_in_flight`` -> copy finished outputs ->
defer (or finish). See ``docs/batch.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_runcomfy.arguments import (
    PreflightMode,
    check_max_cost,
    check_on_schema_unavailable,
    check_preflight,
    check_sign_expiry,
)
from airflow_provider_runcomfy.batch.worker import BatchWorkerIO
from airflow_provider_runcomfy.client.errors import InvalidInputError, JobTimeoutError, RunComfyError
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.operators.links import RunComfyManifestLink, RunComfyOutputLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.batch.engine import BatchRun, BatchSpend, Prepared
    from airflow_provider_runcomfy.batch.items import BatchItem
    from airflow_provider_runcomfy.models.catalog import BatchGuard

OnUnknownSubmit = Literal["report", "resubmit"]

#: The triggerer's own defer timeout is a backstop behind the batch's deadline.
DEFER_TIMEOUT_MARGIN = timedelta(seconds=120)
#: How long a finished job waits for others before the worker wakes to copy its outputs.
MAX_WAIT_REFILL = 15.0
MAX_WAIT_TAIL = 60.0
#: How long ``on_kill`` keeps at cancelling (the task process is about to be stopped).
ON_KILL_SECONDS = 20.0


class RunComfyBatchOperator(BatchWorkerIO, BaseOperator):
    """Runs ``model_id`` over every input of ``inputs``: bounded in flight, resumable, never paying twice.

    Return value (small whatever N is): ``{"total", "succeeded", "failed", "cancelled",
    "invalid", "unknown", "not_submitted", "in_flight", "cost_usd", "manifest", "stopped",
    "stopped_by_budget"}``; ``manifest`` is the URI of ``manifest.jsonl`` (one line per input,
    in input order: ``index``, ``input``, ``request_id``, ``status``, ``outputs``, ``stored``,
    ``error``, ``cost_usd``).

    **Failure policy.** The task succeeds when at least one item succeeded and at most
    ``max_failed_items`` did not (no limit by default), and fails otherwise -- always after
    the manifest is written. Failed items are listed in the log and the manifest.

    **Resume.** A retry or a clear of the task reads the ledger: finished items are neither
    paid for nor copied again, jobs still running are waited for, failed or cancelled items
    are submitted again, and an item whose submit's answer was lost is ``unknown`` and not
    submitted again (``on_unknown_submit="resubmit"`` to pay for it anyway). Items whose input
    changed are new items.

    :param model_id: the RunComfy model, e.g. ``google/nano-banana/edit`` (templated).
    :param inputs: a list of model-input dicts, an XComArg resolving to one, or the URI of a
        JSON-lines file with one input per line (any ``ObjectStoragePath``) (templated).
    :param output_dir: where the ledger, the copies of the outputs and ``manifest.jsonl`` live:
        ``{output_dir}/{dag_id}/{run_id}/{task_id}/{map_index}/`` (templated; required).
    :param max_in_flight: the most jobs RunComfy holds for this task at once (queued + running).
    :param max_invalid_items: fail before submitting anything when more inputs than this are
        invalid (None: submit the valid ones whatever the count; all invalid always fails).
    :param max_failed_items: fail (after the manifest) when more items than this did not succeed.
    :param on_unknown_submit: ``"report"`` (default) or ``"resubmit"``: what a later try does with an
        item whose earlier submit may or may not have reached RunComfy.
    :param deferrable: wait in the triggerer between refills (default) or poll in the worker.
    :param poll_interval: seconds between reads of a job that is not done when expected.
    :param timeout: wall-clock seconds for the whole batch (per try); at the deadline queued jobs
        are cancelled and the task fails. None: no limit.
    :param max_output_bytes: the largest output file kept (default 200 MB).
    :param submit_concurrency: submits on the wire at once (fewer after 429s, recovering).
    :param runcomfy_conn_id: the Airflow connection holding the API token.
    :param max_cost_usd: the batch's budget in USD: a batch whose estimate is over it does not start;
        once recorded spend plus the estimates in flight would pass it, no further item is submitted,
        the jobs in flight finish and are kept, and the return value says ``stopped_by_budget``.
        See ``docs/spend.md``.
    :param on_schema_unavailable: items of a model without typed inputs are checked against its
        published JSON Schema; when it cannot be had, ``"warn"`` (default) submits them unchecked,
        ``"fail"`` fails the task before any submit.
    :param preflight: ``"warn"`` (default), ``"strict"`` or ``"off"``: check every item's https
        inputs before anything is submitted (a 404, a web page or a file over 50 MB makes the item
        invalid; a host the worker cannot reach is a warning, with ``"strict"`` an invalid item).
        Files given as paths (``s3://``, local) are checked either way. See ``docs/inputs.md``.
    :param sign_expiry: how long the pre-signed URLs of ``s3://``/``gs://`` inputs stay valid
        (seconds or a ``timedelta``); None: ``timeout`` plus 15 minutes (a day without one).
    """

    template_fields: Sequence[str] = ("model_id", "inputs", "output_dir")
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}
    operator_extra_links = (RunComfyOutputLink(), RunComfyManifestLink())
    ui_color = "#d8ccff"

    def __init__(
        self,
        *,
        model_id: str,
        inputs: Any,
        output_dir: Any,
        max_in_flight: int = 64,
        max_invalid_items: int | None = None,
        max_failed_items: int | None = None,
        on_unknown_submit: OnUnknownSubmit = "report",
        deferrable: bool = True,
        poll_interval: float = 5.0,
        timeout: float | None = None,
        max_output_bytes: int | None = None,
        submit_concurrency: int = 8,
        runcomfy_conn_id: str = RunComfyHook.default_conn_name,
        max_cost_usd: float | None = None,
        on_schema_unavailable: str = "warn",
        preflight: PreflightMode = "warn",
        sign_expiry: int | timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.preflight = check_preflight(preflight)
        self.sign_expiry = check_sign_expiry(sign_expiry)
        if not output_dir:
            raise ValueError(
                "output_dir is required: the batch keeps its ledger, outputs and manifest there."
            )
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive integer, not {max_in_flight!r}.")
        if on_unknown_submit not in ("report", "resubmit"):
            raise ValueError(f"on_unknown_submit must be 'report' or 'resubmit', not {on_unknown_submit!r}.")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}.")
        self.model_id = model_id
        self.inputs = inputs
        self.output_dir = output_dir
        self.max_in_flight = max_in_flight
        self.max_invalid_items = max_invalid_items
        self.max_failed_items = max_failed_items
        self.on_unknown_submit = on_unknown_submit
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self.submit_concurrency = max(1, int(submit_concurrency))
        self.runcomfy_conn_id = runcomfy_conn_id
        # Checked when the DAG is parsed (``arguments`` is stdlib only, so parsing stays cheap).
        max_cost_usd = check_max_cost(max_cost_usd)
        check_on_schema_unavailable(on_schema_unavailable)
        self.max_cost_usd = max_cost_usd
        self.on_schema_unavailable = on_schema_unavailable
        self._run: BatchRun | None = None

    # -- seams for the inputs and spend helpers ---------------------------------------------------

    def prepare_items(self, items: Sequence[BatchItem], *, for_submit: bool) -> list[Prepared]:
        """INPUTS SEAM: each item's request body, or the ``RunComfyError`` that makes it invalid.

        Called before validation: once for every new item when the batch starts
        (``for_submit=False``: the place to pre-flight input URLs, concurrently and bounded),
        and again for the few items about to be submitted (``for_submit=True``: the place to
        sign storage paths, so that a pre-signed URL is fresh and never stored). An item
        returned as an error is reported like an invalid one and never submitted.

        Here (``sources``, see ``docs/inputs.md``): the first pass checks every item's files in
        storage and pre-flights its https inputs, concurrently and bounded, signing and reading
        nothing; the second signs or inlines the files of the items about to be submitted (their
        URLs are not pre-flighted again). The ledger and the manifest keep the inputs as given.
        """
        from airflow_provider_runcomfy.sources import InputPreparer, sign_expiry_for

        payloads = [item.input for item in items if isinstance(item.input, dict)]
        with InputPreparer(
            preflight="off" if for_submit else self.preflight,
            sign_expiry=self.sign_expiry or sign_expiry_for(self.timeout),
            # The run's (read when it opened): no connection look-up from inside the refill's loop.
            api_base_url=self._run.api_base_url if self._run is not None else self._base_url(),
            check_only=not for_submit,
            logger=self.log,
        ) as preparer:
            prepared = iter(preparer.prepare_many(self.model_id, payloads))
        results: list[Prepared] = []
        for item in items:
            if not isinstance(item.input, dict):
                results.append(_not_a_dict(item))
                continue
            one = next(prepared)
            results.append(one if isinstance(one, RunComfyError) else one.payload_to_send)
        return results

    def may_submit(self, item: BatchItem, spend: BatchSpend) -> bool:
        """BUDGET SEAM: asked before each submit; False stops submitting (reported as ``stopped_by_budget``).

        ``spend`` has the recorded cost so far, the jobs in flight, the submits made and the
        items still to submit. Refuses from the first item that would take recorded spend plus the
        estimates in flight past ``max_cost_usd`` (see ``models.spend.Budget``).
        """
        return self.spend_guard.may_submit(item.input, spent_usd=spend.spent_usd, in_flight=spend.in_flight)

    @cached_property
    def spend_guard(self) -> BatchGuard:
        """Any model's items checked against its published schema, and the budget (``models.catalog``)."""
        from airflow_provider_runcomfy.models.catalog import BatchGuard

        # Built in the worker before the submit loop (``_check`` asks first): the price is read here.
        return BatchGuard(
            self.model_id,
            self.runcomfy_conn_id,
            self.hook.get_model,
            max_cost_usd=self.max_cost_usd,
            on_schema_unavailable=self.on_schema_unavailable,
            log=self.log,
        ).read_price()

    # -- Airflow entry points -----------------------------------------------------------------

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(runcomfy_conn_id=self.runcomfy_conn_id)

    def execute(self, context: Context) -> Any:
        """Check every input, then submit (or resume) the batch."""
        run = self._open(context)
        invalid = self._check(run)
        if invalid and (
            invalid == len(run.items)
            or (self.max_invalid_items is not None and invalid > self.max_invalid_items)
        ):
            manifest = self._write_manifest(context, run)
            limit = (
                "every input"
                if invalid == len(run.items)
                else f"more than max_invalid_items={self.max_invalid_items}"
            )
            raise AirflowFailException(
                f"{invalid} of {len(run.items)} inputs are invalid ({limit}); nothing was submitted. "
                f"Each one's reason is in {manifest} and above."
            )
        ti = context["ti"]
        run.start_try(int(ti.try_number), f"{getattr(ti, 'id', '')}:{ti.try_number}")
        self._check_budget(run)
        return self._advance(context, run)

    def _check_budget(self, run: BatchRun) -> None:
        """Before a try submits anything: refuse a batch whose estimate is over ``max_cost_usd``."""
        from airflow_provider_runcomfy.batch.ledger import READY

        ready = [item.input for item, _ in run.records(READY)]
        try:
            self.spend_guard.start(ready, spent_usd=run.spend().spent_usd)
        except RunComfyError as error:
            raise AirflowFailException(error.message) from error

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after a wait: record its outcomes, copy, refill, defer again or finish."""
        run = self._open(context)
        self._check(run, report=False)
        return self._after_wait(context, run, event or {})

    def on_kill(self) -> None:
        """Cancel the batch's queued jobs when the task is killed while it runs in a worker.

        A deferred task is cancelled by its trigger (``RunComfyBatchTrigger.on_kill``).
        """
        run = self._run
        if run is None:
            return
        from airflow_provider_runcomfy.batch import ledger as L

        give_up = time.monotonic() + ON_KILL_SECONDS
        for _, record in run.records(L.SUBMITTED):
            if time.monotonic() > give_up:
                self.log.warning(
                    "Stopped cancelling after %.0f s; remaining jobs may run and be billed.", ON_KILL_SECONDS
                )
                break
            try:
                self.hook.cancel(str(record.request_id))
            except RunComfyError as error:
                self.log.warning("Could not cancel RunComfy request %s: %s", record.request_id, error)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """When the triggerer's own defer timeout fired first: cancel queued jobs, write the manifest."""
        if next_method == "__fail__":
            run = self._open(context)
            asyncio.run(self._cancel(run, "the deferral timed out"))
            self._write_manifest(context, run)
        return super().resume_execution(next_method, next_kwargs, context)

    # -- the cycle ------------------------------------------------------------------------------

    def _open(self, context: Context) -> BatchRun:
        from airflow_provider_runcomfy.batch.engine import BatchRun
        from airflow_provider_runcomfy.batch.items import load_inputs, make_items
        from airflow_provider_runcomfy.batch.ledger import Ledger
        from airflow_provider_runcomfy.client.download import DEFAULT_MAX_OUTPUT_BYTES
        from airflow_provider_runcomfy.outputs.storage import task_directory

        ti = context["ti"]
        try:
            items = make_items(self.model_id, load_inputs(self.inputs))
            folder = task_directory(
                self.output_dir,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index,
            )
        except RunComfyError as error:  # bad inputs, or an output_dir that cannot be written
            if error.retryable:
                raise
            raise AirflowFailException(error.message) from error
        if not items:
            raise AirflowFailException("inputs is empty: there is nothing to run.")
        ledger = Ledger(folder, self.model_id).load()
        self._run = BatchRun(
            self.model_id,
            items,
            ledger,
            folder,
            max_in_flight=self.max_in_flight,
            max_output_bytes=self.max_output_bytes or DEFAULT_MAX_OUTPUT_BYTES,
            resubmit_unknown=self.on_unknown_submit == "resubmit",
            log=self.log,
            api_base_url=self._base_url(),
        )
        return self._run

    def _check(self, run: BatchRun, *, report: bool = True) -> int:
        invalid = run.check(
            lambda items: self.prepare_items(items, for_submit=False), self.spend_guard.validate
        )
        if invalid and report:
            from airflow_provider_runcomfy.batch import ledger as L

            shown = run.records(L.INVALID)[:20]
            for item, record in shown:
                self.log.warning("Item %d is invalid and is not submitted: %s", item.index, record.error)
            if invalid > len(shown):
                self.log.warning("... and %d more invalid items (see the manifest).", invalid - len(shown))
        return invalid

    def _after_wait(self, context: Context, run: BatchRun, event: dict[str, Any]) -> Any:
        run.apply_outcomes(event.get("outcomes") or [])
        status = event.get("status")
        fired_at = event.get("fired_at")
        if status == "ready" and isinstance(fired_at, (int, float)):
            # How long this worker took to resume after the event: the next trigger wakes it that
            # much before the jobs it waits for are expected to end (see ``WakeRule.lead_seconds``).
            latency = max(0.0, time.time() - float(fired_at))
            self.log.info("Resumed %.1f s after the trigger fired.", latency)
            earlier = run.ledger.meta.get("resume_latency")
            run.ledger.set_meta(resume_latency=latency if earlier is None else (float(earlier) + latency) / 2)
            # Read the jobs that were expected to end while the worker was on its way.
            run.apply_outcomes(asyncio.run(self._catch_up(run)))
        if status == "timeout":
            asyncio.run(self._cancel(run, f"the batch's timeout of {self.timeout} s passed"))
            run.store_outputs()
            self._finish(context, run, timed_out=True)
        if status == "error":
            message = str(event.get("message") or "RunComfy could not be read.")
            self._write_manifest(context, run)
            if event.get("retryable"):
                raise RunComfyError(message + " A retry of the task re-attaches to the jobs in flight.")
            raise AirflowFailException(
                message + " The jobs in flight are recorded; a clear re-attaches to them."
            )
        return self._advance(context, run)

    def _advance(self, context: Context, run: BatchRun) -> Any:
        from airflow_provider_runcomfy.batch import ledger as L
        from airflow_provider_runcomfy.batch.pacing import SubmitPacer
        from airflow_provider_runcomfy.batch.progress import Progress

        pacer = SubmitPacer(max_concurrency=self.submit_concurrency, concurrency=self.submit_concurrency)
        progress = Progress(
            total=len(run.items),
            done=run.done_count(),
            started_at=float(run.ledger.meta.get("try_started_at") or time.time()),
            done_at_start=int(run.ledger.meta.get("done_at_try_start") or 0),
        )
        while True:
            deadline = self._deadline(run)
            started = time.monotonic()
            refill = asyncio.run(self._refill(run, pacer, int(context["ti"].try_number)))
            submitted_in = time.monotonic() - started
            if refill.fatal is not None:
                self._write_manifest(context, run)
                raise AirflowFailException(
                    f"{refill.fatal.message} Nothing more is submitted; the jobs already in flight are "
                    "recorded and a clear of the task re-attaches to them."
                )
            if refill.stopped == "balance" and refill.message:  # said once, when it happens
                self.log.error(
                    "RunComfy says the account is out of balance: no more items are submitted; the %d jobs in "
                    "flight are kept. %s",
                    len(run.records(L.SUBMITTED)),
                    refill.message,
                )
            started = time.monotonic()
            kept = run.store_outputs()
            self.log.info(
                "This worker part: %d submitted in %.1f s (%d refused by 429s), %d outputs kept in %.1f s.",
                refill.submitted,
                submitted_in,
                refill.refused,
                kept,
                time.monotonic() - started,
            )
            progress.done = run.done_count()
            progress.maybe_log(self.log.info, in_flight=len(run.records(L.SUBMITTED)), force=True)
            window = run.in_flight()
            waiting_to_submit = run.ready_count() > 0 and not run.stopped
            if not window and not run.records(L.FINISHED) and not waiting_to_submit:
                return self._finish(context, run)
            if deadline is not None and time.time() >= deadline:
                asyncio.run(self._cancel(run, f"the batch's timeout of {self.timeout} s passed"))
                self._finish(context, run, timed_out=True)
            wake_at = refill.paused_until
            if not window and wake_at is None:
                # Nothing to watch: submits were refused (try again shortly), or copies failed
                # for a passing reason (try them again a little later).
                wake_at = time.time() + (1.0 if waiting_to_submit else 5.0)
            tail = not waiting_to_submit
            expected = run.expected_seconds()
            trigger_kwargs: dict[str, Any] = {
                "model_id": self.model_id,
                "window": window,
                "runcomfy_conn_id": self.runcomfy_conn_id,
                "poll_interval": self.poll_interval,
                "wake_count": run.wake_count(),
                "max_wait": MAX_WAIT_TAIL if tail else max(MAX_WAIT_REFILL, 2 * self.poll_interval),
                "wake_at": wake_at,
                "expected_seconds": expected,
                "lead_seconds": self._lead_seconds(run, expected),
                "deadline": deadline,
                "progress": {
                    "total": progress.total,
                    "done": progress.done,
                    "started_at": progress.started_at,
                    "done_at_start": progress.done_at_start,
                },
            }
            run.ledger.compact()
            if self.deferrable:
                from airflow_provider_runcomfy.triggers.batch import RunComfyBatchTrigger

                self.defer(
                    trigger=RunComfyBatchTrigger(**trigger_kwargs),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(0.0, deadline - time.time())) + DEFER_TIMEOUT_MARGIN
                    if deadline is not None
                    else None,
                )
            event = asyncio.run(self._wait_here(trigger_kwargs))
            run.apply_outcomes(event.get("outcomes") or [])
            if event.get("status") != "ready":
                return self._after_wait(context, run, {**event, "outcomes": []})

    # -- the end --------------------------------------------------------------------------------

    def _write_manifest(self, context: Context, run: BatchRun) -> str:
        from airflow_provider_runcomfy.batch.report import manifest_rows
        from airflow_provider_runcomfy.outputs.manifest import write_manifest

        path = write_manifest(run.folder / "manifest.jsonl", manifest_rows(run))
        run.ledger.compact(force=True)
        uri = str(path)
        try:
            context["ti"].xcom_push(key="manifest", value=uri)
        except Exception as error:  # the manifest is written; its XCom is a convenience
            self.log.warning("Could not push the manifest's URI to XCom: %s", error)
        return uri

    def _finish(self, context: Context, run: BatchRun, *, timed_out: bool = False) -> dict[str, Any]:
        from airflow_provider_runcomfy.batch.report import summary

        uri = self._write_manifest(context, run)
        result = summary(run, uri)
        counts = ", ".join(
            f"{result[k]} {k}"
            for k in ("succeeded", "failed", "cancelled", "invalid", "unknown", "not_submitted", "in_flight")
            if result[k]
        )
        cost = f"; cost ${result['cost_usd']:.4f}" if result["cost_usd"] is not None else ""
        self.log.info(
            "Batch of %d items: %s%s. Manifest: %s", result["total"], counts or "nothing done", cost, uri
        )
        self._log_failures(run)
        not_ok = result["total"] - result["succeeded"] - result["invalid"]
        if timed_out:
            raise JobTimeoutError(
                f"The batch did not finish within timeout={self.timeout} s ({counts}); queued jobs were cancelled. "
                f"A retry resumes it: finished items are not paid for again. Manifest: {uri}"
            )
        if run.stopped == "balance":
            raise AirflowFailException(
                f"RunComfy says the account is out of balance: {result['not_submitted']} items were not submitted "
                f"({run.stop_message}). Top up, then clear the task: finished items are not paid for again. "
                f"Manifest: {uri}"
            )
        if result["succeeded"] == 0 and not_ok > 0:
            raise AirflowFailException(f"No item of the batch succeeded ({counts}). Manifest: {uri}")
        if self.max_failed_items is not None and not_ok > self.max_failed_items:
            raise AirflowFailException(
                f"{not_ok} items did not succeed, more than max_failed_items={self.max_failed_items} ({counts}). "
                f"Manifest: {uri}"
            )
        return result

    def _log_failures(self, run: BatchRun) -> None:
        from airflow_provider_runcomfy.batch import ledger as L

        bad = run.records(L.FAILED, L.CANCELLED, L.UNKNOWN)
        for item, record in bad[:20]:
            self.log.warning("Item %d (%s) %s: %s", item.index, record.request_id, record.state, record.error)
        if len(bad) > 20:
            self.log.warning("... and %d more items that did not succeed (see the manifest).", len(bad) - 20)


def _not_a_dict(item: BatchItem) -> RunComfyError:
    return InvalidInputError(
        f"Item {item.index}: an input must be a JSON object of the model's fields, not "
        f"{type(item.input).__name__}: {str(item.input)[:80]!r}."
    )
