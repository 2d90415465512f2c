"""The worker's I/O for a batch: its clients, the refill, the waits it does itself, the cancels.

``BatchWorkerIO`` is a part of ``RunComfyBatchOperator`` (which provides ``hook``,
``model_id``, ``poll_interval``, ``deferrable`` and the seams), kept apart so the
operator reads as the cycle it runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_runcomfy.batch.engine import BatchRun, RefillResult
    from airflow_provider_runcomfy.client import AsyncRunComfyClient
    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

#: How long a resumed worker waits in place for jobs about to end, rather than deferring again.
STAY_SECONDS = 3.0


class BatchWorkerIO:
    """Clients and network steps of the batch operator's worker parts."""

    model_id: str
    runcomfy_conn_id: str
    poll_interval: float
    deferrable: bool
    timeout: float | None
    log: Any
    prepare_items: Any
    may_submit: Any

    if TYPE_CHECKING:

        @property
        def hook(self) -> RunComfyHook: ...

    async def _refill(self, run: BatchRun, pacer: Any, try_number: int) -> RefillResult:
        from airflow_provider_runcomfy.models import validate_input

        async with self._async_client(submits=True) as client:
            return await run.refill(
                client,
                pacer,
                prepare=lambda items: self.prepare_items(items, for_submit=True),
                validate=validate_input,
                may_submit=self.may_submit,
                try_number=try_number,
            )

    async def _wait_here(self, trigger_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The blocking mode's wait: the trigger's loop, run in the worker."""
        from airflow_provider_runcomfy.batch.progress import Progress
        from airflow_provider_runcomfy.batch.window import WakeRule, Window

        kwargs = trigger_kwargs
        window = Window(
            kwargs["window"],
            model_id=self.model_id,
            poll_interval=self.poll_interval,
            rule=WakeRule(
                kwargs["wake_count"], kwargs["max_wait"], kwargs["wake_at"], kwargs["lead_seconds"]
            ),
            expected_seconds=kwargs["expected_seconds"],
            deadline=kwargs["deadline"],
            progress=Progress(**kwargs["progress"]),
            log_line=self.log.info,
        )
        async with self._async_client(submits=False) as client:
            return await window.wait(client)

    async def _catch_up(self, run: BatchRun) -> list[dict[str, Any]]:
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

    async def _cancel(self, run: BatchRun, why: str) -> None:
        async with self._async_client(submits=False) as client:
            await run.cancel_in_flight(client, why)

    def _async_client(self, *, submits: bool) -> AsyncRunComfyClient:
        from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy

        kwargs = self.hook.client_kwargs(self.hook.get_connection(self.runcomfy_conn_id))
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

    def _base_url(self) -> str:
        from airflow_provider_runcomfy.client import DEFAULT_BASE_URL

        return str(
            self.hook.client_kwargs(self.hook.get_connection(self.runcomfy_conn_id)).get("base_url")
            or DEFAULT_BASE_URL
        )

    def _deadline(self, run: BatchRun) -> float | None:
        if self.timeout is None:
            return None
        return float(run.ledger.meta.get("try_started_at") or time.time()) + float(self.timeout)
