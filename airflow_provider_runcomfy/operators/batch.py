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

from airflow_provider_runcomfy import policy
from airflow_provider_runcomfy.arguments import (
    PreflightMode,
    check_max_cost,
    check_on_schema_unavailable,
    check_preflight,
    check_sign_expiry,
    keep_wait_arguments,
)
from airflow_provider_runcomfy.batch.owner import OwnershipLost
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.compat import AirflowFailException
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.operators._batch_finishing import BatchFinishing, BatchLineage
from airflow_provider_runcomfy.operators._batch_worker import ON_KILL_SECONDS, BatchWorker, api_base_url
from airflow_provider_runcomfy.operators.links import RunComfyManifestLink, RunComfyOutputLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.batch.engine import BatchRun, BatchSpend
    from airflow_provider_runcomfy.batch.items import BatchItem
    from airflow_provider_runcomfy.models.catalog import BatchGuard
    from airflow_provider_runcomfy.sources.prepare import PreparedBody

__all__ = ["DEFER_TIMEOUT_MARGIN", "ON_KILL_SECONDS", "OnUnknownSubmit", "RunComfyBatchOperator"]

OnUnknownSubmit = Literal["report", "resubmit"]
OnDamagedLedger = Literal["fail", "reconcile"]

#: Inputs checked (pre-flighted) per worker part at least, when not all are needed before the first
#: submit: the first submits of a batch of thousands start after this many checks, not all of them.
CHECK_CHUNK = 256
#: The triggerer's own defer timeout is a backstop behind the batch's deadline (``policy``).
DEFER_TIMEOUT_MARGIN = policy.DEFER_TIMEOUT_MARGIN


class RunComfyBatchOperator(BaseOperator):
    """Runs ``model_id`` over every input of ``inputs``: bounded in flight, resumable, never paying twice.

    Return value (small whatever N is): ``{"total", "succeeded", "failed", "cancelled",
    "invalid", "unknown", "not_submitted", "in_flight", "cost_usd", "manifest", "stopped",
    "stopped_by_budget", "stop_reason"}``; ``manifest`` is the URI of ``manifest.jsonl`` (one line
    per input, in input order: ``index``, ``model_id``, ``input``, ``request_id``, ``status``,
    ``outputs``, ``stored``, ``error``, ``cost_usd``); ``stop_reason`` says why a batch stopped
    submitting (its budget's figures, or the balance), None when it did not.

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
    :param on_damaged_ledger: ``"fail"`` (default) or ``"reconcile"``: what a new execution does with a
        ledger file that is empty, cut, corrupt or missing. ``"fail"`` stops before any submit and names
        the file; ``"reconcile"`` rebuilds the ledger from the readable records, ``manifest.jsonl`` and
        the kept outputs, and reports every item it cannot account for as ``unknown`` (never paid again
        unless ``on_unknown_submit="resubmit"``). See ``docs/batch.md``.
    :param sign_expiry: how long the pre-signed URLs of ``s3://``/``gs://`` inputs stay valid
        (seconds or a ``timedelta``); None: ``timeout`` plus 15 minutes (a day without one).
    """

    template_fields: Sequence[str] = ("model_id", "inputs", "output_dir")
    template_fields_renderers: ClassVar[dict[str, str]] = {"inputs": "json"}
    operator_extra_links = (RunComfyOutputLink(), RunComfyManifestLink())
    ui_color = "#d8ccff"
    # Checked and kept in ``__init__`` by ``keep_wait_arguments`` (shared with the other RunComfy tasks).
    runcomfy_conn_id: str
    deferrable: bool
    poll_interval: float
    output_dir: Any
    max_output_bytes: int | None

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
        on_damaged_ledger: OnDamagedLedger = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_id = model_id
        self.inputs = inputs
        self.timeout = timeout
        # Each argument is checked beside where it is kept, when the DAG is parsed (the checks are
        # stdlib only, so parsing stays cheap).
        if not output_dir:
            raise ValueError(
                "output_dir is required: the batch keeps its ledger, outputs and manifest there."
            )
        keep_wait_arguments(self, runcomfy_conn_id, deferrable, poll_interval, output_dir, max_output_bytes)
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive integer, not {max_in_flight!r}.")
        self.max_in_flight = max_in_flight
        self.max_invalid_items = max_invalid_items
        self.max_failed_items = max_failed_items
        if on_unknown_submit not in ("report", "resubmit"):
            raise ValueError(f"on_unknown_submit must be 'report' or 'resubmit', not {on_unknown_submit!r}.")
        self.on_unknown_submit = on_unknown_submit
        if on_damaged_ledger not in ("fail", "reconcile"):
            raise ValueError(f"on_damaged_ledger must be 'fail' or 'reconcile', not {on_damaged_ledger!r}.")
        self.on_damaged_ledger = on_damaged_ledger
        self.submit_concurrency = max(1, int(submit_concurrency))
        self.max_cost_usd = check_max_cost(max_cost_usd)
        self.on_schema_unavailable = check_on_schema_unavailable(on_schema_unavailable)
        self.preflight = check_preflight(preflight)
        self.sign_expiry = check_sign_expiry(sign_expiry)

    # -- seams for the inputs and spend helpers ---------------------------------------------------

    def prepare_items(self, items: Sequence[BatchItem], *, for_submit: bool) -> list[PreparedBody]:
        """INPUTS SEAM: each item's request body, or the ``RunComfyError`` that makes it invalid.

        Called before validation: once for every new item when the batch starts
        (``for_submit=False``: the place to pre-flight input URLs, concurrently and bounded),
        and again for the few items about to be submitted (``for_submit=True``: the place to
        sign storage paths, so that a pre-signed URL is fresh and never stored). An item
        returned as an error is reported like an invalid one and never submitted.
        Here: ``batch.items.prepare_items`` (``sources``, see ``docs/inputs.md``).
        """
        from airflow_provider_runcomfy.batch.items import prepare_items
        from airflow_provider_runcomfy.sources import sign_expiry_for

        return prepare_items(
            self.model_id,
            items,
            for_submit=for_submit,
            preflight=self.preflight,
            sign_expiry=self.sign_expiry or sign_expiry_for(self.timeout),
            api_base_url=api_base_url(self.hook),
            log=self.log,
        )

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

    def _stop_reason(self) -> str | None:
        """Why ``may_submit`` refused: the budget's figures (None when an override refused on its own)."""
        guard: BatchGuard | None = self.__dict__.get("spend_guard")  # never built here: no price read
        return guard.budget.stopped_reason if guard is not None and guard.max_cost_usd is not None else None

    # -- the parts, built when a worker part first needs them (the template fields are rendered) ----

    @cached_property
    def _worker(self) -> BatchWorker:
        """The worker's clients, waits and cancels. The seams are this operator's bound methods, so a
        subclass's ``prepare_items`` or ``may_submit`` is the one asked."""
        return BatchWorker(
            model_id=self.model_id,
            inputs=self.inputs,
            output_dir=self.output_dir,
            max_in_flight=self.max_in_flight,
            max_output_bytes=self.max_output_bytes,
            on_unknown_submit=self.on_unknown_submit,
            on_damaged_ledger=self.on_damaged_ledger,
            runcomfy_conn_id=self.runcomfy_conn_id,
            poll_interval=self.poll_interval,
            deferrable=self.deferrable,
            timeout=self.timeout,
            hook=self.hook,
            log=self.log,
            prepare_items=self.prepare_items,
            may_submit=self.may_submit,
            stop_reason=self._stop_reason,
        )

    @cached_property
    def _finishing(self) -> BatchFinishing:
        """The manifest, the last log lines and the verdict; it keeps the return value for the lineage."""
        return BatchFinishing(log=self.log, timeout=self.timeout, max_failed_items=self.max_failed_items)

    # -- Airflow entry points -----------------------------------------------------------------

    @cached_property
    def hook(self) -> RunComfyHook:
        return RunComfyHook(runcomfy_conn_id=self.runcomfy_conn_id)

    def execute(self, context: Context) -> Any:
        """Check every input, then submit (or resume) the batch."""
        run = self._worker.open(context)
        invalid = self._check(run)
        if invalid and (
            (invalid == len(run.items) and not run.unchecked_count())
            or (self.max_invalid_items is not None and invalid > self.max_invalid_items)
        ):
            manifest = self._finishing.write_manifest(context, run)
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
        run.settle()  # a same-try re-run skips start_try: stale intents of another execution settle here
        asyncio.run(self._worker.cancel_vanished(run))
        self._check_budget(run)
        return self._advance(context, run)

    def _check_budget(self, run: BatchRun) -> None:
        """Before a try submits anything: refuse a batch whose estimate is over ``max_cost_usd``."""
        from airflow_provider_runcomfy.batch.ledger import READY

        ready = [item.input for item, _ in run.records(READY)]
        ready += [item.input for item in run.items if run.ledger.get(item.key) is None]  # not checked yet
        try:
            self.spend_guard.start(ready, spent_usd=run.spend().spent_usd)
        except RunComfyError as error:
            raise AirflowFailException(error.message) from error

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after a wait: record its outcomes, copy, refill, defer again or finish."""
        run = self._worker.open(context, owner_id=(event or {}).get("owner"))
        self._check(run, report=False)
        run.settle()
        return self._after_wait(context, run, event or {})

    def on_kill(self) -> None:
        """Cancel the batch's queued jobs when the task is killed while it runs in a worker.

        A deferred task is cancelled by its trigger (``RunComfyBatchTrigger.on_kill``).
        """
        worker: BatchWorker | None = self.__dict__.get("_worker")  # None: no batch was opened here
        if worker is not None:
            worker.cancel_now()

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """When the triggerer's own defer timeout fired first: cancel queued jobs, write the manifest."""
        if next_method == "__fail__":
            run = self._worker.open(context)
            asyncio.run(self._worker.cancel(run, "the deferral timed out"))
            self._finishing.write_manifest(context, run)
        return super().resume_execution(next_method, next_kwargs, context)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input source, ``output_dir`` and counts of the batch (``BatchLineage``); never fails the task."""
        finishing: BatchFinishing | None = self.__dict__.get("_finishing")  # None: the batch did not end here
        result = finishing.result if finishing is not None else None
        return BatchLineage(self.model_id, self.inputs, self.output_dir, result).facets()

    # -- the cycle ------------------------------------------------------------------------------

    def _check(self, run: BatchRun, *, report: bool = True) -> int:
        """Check the next inputs: all of them when ``max_invalid_items`` needs the count before any
        submit, else a share (``CHECK_CHUNK``) per worker part, so submits start while the rest wait."""
        limit = None if self.max_invalid_items is not None else max(CHECK_CHUNK, 2 * self.max_in_flight)
        invalid = run.check(
            lambda items: self.prepare_items(items, for_submit=False), self.spend_guard.validate, limit=limit
        )
        if invalid and report:
            self._finishing.report_invalid(run, invalid)
        return invalid

    def _after_wait(self, context: Context, run: BatchRun, event: dict[str, Any]) -> Any:
        from airflow_provider_runcomfy.batch.step import Action, after_wait

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
            run.apply_outcomes(asyncio.run(self._worker.catch_up(run)))
        # The core decides (``batch.step.after_wait``); here its answer becomes Airflow's.
        step = after_wait(event)
        if step is not None and step.action is Action.TIMED_OUT:
            self._time_out(context, run, keep_outputs=True)
        if step is not None and step.action is Action.FAIL:
            self._finishing.write_manifest(context, run)
            message = str(step.message)
            raise RunComfyError(message) if step.retryable else AirflowFailException(message)
        return self._advance(context, run)

    def _time_out(self, context: Context, run: BatchRun, *, keep_outputs: bool = False) -> None:
        """The batch's ``timeout`` passed: cancel the queued jobs, keep what arrived (after a wait),
        write the manifest and raise ``JobTimeoutError`` (a retry resumes the batch)."""
        asyncio.run(self._worker.cancel(run, f"the batch's timeout of {self.timeout} s passed"))
        if keep_outputs:
            run.store_outputs()
        self._finish(context, run, timed_out=True)

    def _finish(self, context: Context, run: BatchRun, *, timed_out: bool = False) -> dict[str, Any]:
        """Write the manifest, say what happened, return the summary or fail (``BatchFinishing.finish``)."""
        return self._finishing.finish(context, run, timed_out=timed_out)

    def _advance(self, context: Context, run: BatchRun) -> Any:
        """The worker part's cycle (``_cycle``); its copy threads end with it, whatever the way out."""
        try:
            return self._cycle(context, run)
        finally:
            run.close_copies()

    def _cycle(self, context: Context, run: BatchRun) -> Any:
        from airflow_provider_runcomfy.batch import ledger as L
        from airflow_provider_runcomfy.batch.pacing import SubmitPacer
        from airflow_provider_runcomfy.batch.progress import Progress
        from airflow_provider_runcomfy.batch.step import Action, after_refill, next_step

        pacer = SubmitPacer(max_concurrency=self.submit_concurrency, concurrency=self.submit_concurrency)
        progress = Progress(
            total=len(run.items),
            done=run.done_count(),
            started_at=float(run.ledger.meta.get("try_started_at") or time.time()),
            done_at_start=int(run.ledger.meta.get("done_at_try_start") or 0),
        )
        part_started = time.time()
        defer_next = False  # a wait in place came back empty: the jobs run later than learned
        while True:
            if run.unchecked_count():
                self._check(run, report=False)
            deadline = self._worker.deadline(run)
            started = time.monotonic()
            try:
                refill = asyncio.run(self._worker.refill(run, pacer, int(context["ti"].try_number)))
            except OwnershipLost as lost:
                raise AirflowFailException(str(lost)) from lost
            submitted_in = time.monotonic() - started
            failed = after_refill(refill)
            if failed is not None:
                self._finishing.write_manifest(context, run)
                raise AirflowFailException(failed.message)
            if refill.stopped == "balance" and refill.message:  # said once, when it happens
                self.log.error(
                    "RunComfy says the account is out of balance: no more items are submitted; the %d jobs in "
                    "flight are kept. %s",
                    run.count(L.SUBMITTED),
                    refill.message,
                )
            # The copies go on during the wait for the next jobs; with none in flight they are what is left.
            started = time.monotonic()
            run.start_copies()
            kept = run.record_copies(wait=not run.in_flight())
            self.log.info(
                "This worker part: %d submitted in %.1f s (%d refused by 429s), %d outputs kept in %.1f s "
                "(%d items still copying).",
                refill.submitted,
                submitted_in,
                refill.refused,
                kept,
                time.monotonic() - started,
                run.copying(),
            )
            progress.done = run.done_count()
            progress.maybe_log(self.log.info, in_flight=run.count(L.SUBMITTED), force=True)
            # The core decides (``batch.step``); here its answer becomes Airflow's.
            step = next_step(run, refill, deadline=deadline)
            if step.action is Action.FINISH:
                return self._finish(context, run)
            if step.action is Action.TIMED_OUT:
                self._time_out(context, run)
            trigger_kwargs = self._worker.wait_args(
                run, step.window, progress, wake_at=step.wake_at, deadline=deadline, tail=step.tail
            )
            run.ledger.compact()
            in_place = (
                self._worker.in_place(trigger_kwargs, step, part_started=part_started)
                if self.deferrable and not defer_next
                else None
            )
            if self.deferrable and in_place is None:
                from airflow_provider_runcomfy.triggers.batch import RunComfyBatchTrigger

                run.record_copies(wait=True)  # nothing is left copying when the part ends
                self.defer(
                    trigger=RunComfyBatchTrigger(**trigger_kwargs),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=max(0.0, deadline - time.time())) + DEFER_TIMEOUT_MARGIN
                    if deadline is not None
                    else None,
                )
            event = asyncio.run(self._worker.wait_here(in_place or trigger_kwargs))
            if in_place is not None and not event.get("outcomes"):
                # The jobs run later than expected: the next wait is deferred, not held here.
                defer_next = True
            if run.limbo():  # the blocking mode reads what the other execution wrote meanwhile
                run.ledger = L.Ledger(run.folder, run.model_id).load()
            run.apply_outcomes(event.get("outcomes") or [])
            run.settle()
            if event.get("status") != "ready":
                return self._after_wait(context, run, {**event, "outcomes": []})
