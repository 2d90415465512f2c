"""The worker's I/O for a batch: its clients, the refill, the waits it does itself, the cancels.

``BatchWorker`` is built by ``RunComfyBatchOperator`` when a worker part starts (from the
rendered template fields), with everything it uses as a constructor argument: the settings,
the hook, the log and the operator's seams. So the operator reads as the cycle it runs, and
this part's dependencies are on its face. It lives at the Airflow edge, not in ``batch/``,
because it reads the task instance and fails the task: ``batch/`` stays free of Airflow,
as ``client/`` is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch.step import (
    MAX_SECONDS_IN_PLACE,
    STAY_SECONDS,
    in_place_until,
    waits_in_place,
)
from airflow_provider_runcomfy.client.errors import RunComfyError
from airflow_provider_runcomfy.compat import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.batch.engine import BatchRun, BatchSpend, RefillResult
    from airflow_provider_runcomfy.batch.items import BatchItem
    from airflow_provider_runcomfy.batch.progress import Progress
    from airflow_provider_runcomfy.batch.step import Step
    from airflow_provider_runcomfy.client import AsyncRunComfyClient
    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
    from airflow_provider_runcomfy.sources.prepare import PreparedBody

#: How long a finished job waits for others before the worker wakes to copy its outputs.
MAX_WAIT_REFILL = 15.0
MAX_WAIT_TAIL = 60.0
#: How long ``on_kill`` keeps at cancelling (the task process is about to be stopped).
ON_KILL_SECONDS = 20.0


def api_base_url(hook: RunComfyHook) -> str:
    """The RunComfy API's base URL of the hook's connection (it decides the URL policy of inputs and outputs)."""
    from airflow_provider_runcomfy.client import DEFAULT_BASE_URL

    return str(hook.settings.get("base_url") or DEFAULT_BASE_URL)


@dataclass
class BatchWorker:
    """Clients and network steps of the batch operator's worker parts.

    ``model_id`` to ``timeout`` are the operator's arguments of those names (the template fields
    as rendered for this try).

    :param hook: the operator's hook: its client settings and the cancels of ``on_kill``.
    :param log: the task's log.
    :param prepare_items: the operator's inputs seam (``prepare_items``), called for the submits.
    :param may_submit: the operator's budget seam, asked before each submit.
    :param stop_reason: why ``may_submit`` refused, for the report.
    """

    model_id: str
    inputs: Any
    output_dir: Any
    max_in_flight: int
    max_output_bytes: int | None
    on_unknown_submit: str
    on_damaged_ledger: str
    runcomfy_conn_id: str
    poll_interval: float
    deferrable: bool
    timeout: float | None
    hook: RunComfyHook
    log: Any
    prepare_items: Callable[..., list[PreparedBody]]
    may_submit: Callable[[BatchItem, BatchSpend], bool]
    stop_reason: Callable[[], str | None]
    #: The batch this worker part opened (``on_kill`` cancels its jobs in flight).
    run: BatchRun | None = field(default=None, init=False)

    def open(self, context: Context, owner_id: str | None = None) -> BatchRun:
        """This worker part's view of the batch: the inputs read, the ledger loaded from ``output_dir``.

        ``owner_id`` None: a new execution, which takes the batch over (``batch.owner``) before it
        reads the ledger; otherwise the execution resuming after its wait, which stops here if a
        newer one took over meanwhile.
        """
        from airflow_provider_runcomfy.batch import ledger as L
        from airflow_provider_runcomfy.batch.engine import BatchRun
        from airflow_provider_runcomfy.batch.items import load_items
        from airflow_provider_runcomfy.batch.owner import Owner, OwnershipLost
        from airflow_provider_runcomfy.client.download import DEFAULT_MAX_OUTPUT_BYTES
        from airflow_provider_runcomfy.outputs.storage import task_directory

        ti = context["ti"]
        try:
            folder = task_directory(
                self.output_dir,
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                task_id=ti.task_id,
                map_index=ti.map_index,
            )
            # A JSON-lines file is read forward from where the last worker part stopped.
            items = load_items(self.model_id, self.inputs, folder)
        except RunComfyError as error:  # bad inputs, or an output_dir that cannot be written
            if error.retryable:
                raise
            raise AirflowFailException(error.message) from error
        if not items:
            raise AirflowFailException("inputs is empty: there is nothing to run.")
        try:
            L.check_durable(folder)
            if owner_id is None:
                owner = Owner.take(folder / L.LEDGER_DIR, try_number=int(ti.try_number))
            else:
                owner = Owner(folder / L.LEDGER_DIR, owner_id)
                owner.check()
            ledger = self._load_ledger(folder, items, new_execution=owner_id is None)
        except (L.LedgerReadError, OwnershipLost) as error:
            raise AirflowFailException(str(error)) from error
        self.run = BatchRun(
            self.model_id,
            items,
            ledger,
            folder,
            max_in_flight=self.max_in_flight,
            max_output_bytes=self.max_output_bytes or DEFAULT_MAX_OUTPUT_BYTES,
            resubmit_unknown=self.on_unknown_submit == "resubmit",
            log=self.log,
            api_base_url=api_base_url(self.hook),
            owner=owner,
        )
        return self.run

    def _load_ledger(self, folder: Any, items: Any, *, new_execution: bool) -> Any:
        """The ledger; a damaged one is rebuilt only when the user asked (``on_damaged_ledger``)."""
        from airflow_provider_runcomfy.batch import ledger as L
        from airflow_provider_runcomfy.batch.reconcile import reconcile

        try:
            # A resumed part leaves the archived (final) records unread: it costs what changed.
            return L.Ledger(folder, self.model_id).load(archive=new_execution)
        except L.LedgerDamagedError as error:
            if self.on_damaged_ledger != "reconcile" or not new_execution:
                raise
            self.log.warning("%s Reconciling, as on_damaged_ledger='reconcile' asks.", error)
            report = reconcile(folder, self.model_id, items)
            self.log.warning("Ledger rebuilt: %s", report.describe())
            return L.Ledger(folder, self.model_id).load()

    async def refill(self, run: BatchRun, pacer: Any, try_number: int) -> RefillResult:
        from airflow_provider_runcomfy.models import validate_input

        async with self._async_client(submits=True) as client:
            return await run.refill(
                client,
                pacer,
                prepare=lambda items: self.prepare_items(items, for_submit=True),
                validate=validate_input,
                may_submit=self.may_submit,
                try_number=try_number,
                stop_reason=self.stop_reason,
            )

    def wait_args(
        self,
        run: BatchRun,
        window: list[list[Any]],
        progress: Progress,
        *,
        wake_at: float | None,
        deadline: float | None,
        tail: bool,
    ) -> dict[str, Any]:
        """The next wait, as ``RunComfyBatchTrigger``'s arguments (the blocking mode reads the same)."""
        expected = run.expected_seconds()
        return {
            "model_id": self.model_id,
            "window": window,
            "owner": run.owner.id if run.owner is not None else None,
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

    def in_place(
        self, wait_args: dict[str, Any], step: Step, *, part_started: float
    ) -> dict[str, Any] | None:
        """The wait's arguments for waiting in this worker, or None to defer (``batch.step.waits_in_place``).

        Jobs due sooner than a deferred trigger would hand its event over anyway (its hold for
        Airflow's defer/resume race: 10 s on Airflow's defaults) are waited for here: deferring
        would only delay the batch and start another task process. An in-place wait has no lead
        (the worker is already here) and ends at ``batch.step.in_place_until``; jobs running later
        than that send the part to defer rather than hold the slot.
        """
        from airflow_provider_runcomfy.batch.window import Window
        from airflow_provider_runcomfy.triggers._base import guard_hold

        args = {**wait_args, "lead_seconds": 0.0}
        now = time.time()
        expected = Window.from_wait_args(args, log_line=self.log.info).expected_wake(now)
        stay = guard_hold()
        if not waits_in_place(step, expected, part_started=part_started, now=now, stay_seconds=stay):
            return None
        bound = in_place_until(expected, now=now, stay_seconds=stay)
        args["wake_at"] = bound if args["wake_at"] is None else min(float(args["wake_at"]), bound)
        self.log.info(
            "The next jobs are due in %.1f s: waiting in this worker rather than deferring (this part has "
            "run %.0f s; it defers after %.0f s).",
            expected - now,
            now - part_started,
            MAX_SECONDS_IN_PLACE,
        )
        return args

    async def wait_here(self, trigger_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The blocking mode's wait: the trigger's loop, run in the worker."""
        from airflow_provider_runcomfy.batch.window import Window

        window = Window.from_wait_args(trigger_kwargs, log_line=self.log.info)
        async with self._async_client(submits=False) as client:
            return await window.wait(client)

    async def catch_up(self, run: BatchRun) -> list[dict[str, Any]]:
        """Read the jobs that were expected to end while the worker was on its way.

        The trigger woke the worker ahead of the jobs' expected end (``lead_seconds``); when
        fewer than a refill's worth have ended yet, the worker waits for them here a little
        (``STAY_SECONDS``): shorter than another deferral would hold the slot for.
        """
        from airflow_provider_runcomfy.batch.window import WakeRule, Window

        expected = run.expected_seconds()
        if expected is None:
            return []
        wake_count = run.wake_count()
        window = Window(
            run.in_flight(),
            model_id=self.model_id,
            poll_interval=self.poll_interval,
            rule=WakeRule(wake_count, STAY_SECONDS, wake_at=time.time() + STAY_SECONDS),
            expected_seconds=expected,
        )
        async with self._async_client(submits=False) as client:
            outcomes = await window.poll_due(client)
            if len(outcomes) < wake_count and window.due_within(STAY_SECONDS) >= wake_count - len(outcomes):
                event = await window.wait(client)
                outcomes = event["outcomes"]
        return outcomes

    def cancel_now(self) -> None:
        """Cancel the jobs in flight one by one while the task is being killed, for ``ON_KILL_SECONDS``."""
        from airflow_provider_runcomfy.batch import ledger as L

        if self.run is None:
            return
        give_up = time.monotonic() + ON_KILL_SECONDS
        for _, record in self.run.records(L.SUBMITTED):
            if time.monotonic() > give_up:
                self.log.warning(
                    "Stopped cancelling after %.0f s; remaining jobs may run and be billed.", ON_KILL_SECONDS
                )
                break
            try:
                self.hook.cancel(str(record.request_id))
            except RunComfyError as error:
                self.log.warning("Could not cancel RunComfy request %s: %s", record.request_id, error)

    async def cancel_vanished(self, run: BatchRun) -> None:
        """Cancel the queued jobs of items no longer in the inputs (their spend still counts)."""
        if run.vanished_in_flight():
            async with self._async_client(submits=False) as client:
                await run.cancel_vanished(client)

    async def cancel(self, run: BatchRun, why: str) -> None:
        async with self._async_client(submits=False) as client:
            await run.cancel_in_flight(client, why)

    def _async_client(self, *, submits: bool) -> AsyncRunComfyClient:
        from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy

        kwargs = dict(self.hook.settings)
        if submits:
            # A 429 comes straight back to the batch's pacer (which slows every submit down),
            # instead of being retried by the client one submit at a time.
            kwargs["retry"] = RetryPolicy(max_attempts=1)
        return AsyncRunComfyClient(**kwargs)

    def _lead_seconds(self, run: BatchRun, expected: float | None) -> float:
        """How long before the jobs' expected end the trigger wakes the worker (deferrable only).

        The worker's measured resume time plus half a second for its catch-up reads; never more
        than most of a job's run time (the worker would then come back to little).
        """
        latency = run.ledger.meta.get("resume_latency")
        if not self.deferrable or latency is None or expected is None:
            return 0.0
        return min(float(latency) + 0.5, 0.8 * expected)

    def deadline(self, run: BatchRun) -> float | None:
        if self.timeout is None:
            return None
        return float(run.ledger.meta.get("try_started_at") or time.time()) + float(self.timeout)
