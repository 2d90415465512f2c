"""Submit once per intent: the record in ``task_state_store`` that lets a retry re-attach, never pay twice.

RunComfy has no idempotency key, so what this task instance has sent is kept in
``context["task_state_store"]`` (Airflow 3.3; kept across retries and clears, unlike XCom), or
below 3.3 in an Airflow Variable of the task instance (``compat.VariableStateStore``, same rules):

1. an **intent** (model, input fingerprint, time) *before* the paid POST;
2. the **request id** right after it (retried; if it cannot be written the job is
   cancelled and the task fails without retry, naming the id).

A later try reads it back: a recorded job is waited on or reused unless it provably
failed, was cancelled or expired; an intent with no request id means an earlier
POST's outcome is unknown, and by default the task stops and says how to check.
The one window left open (a worker killed during the POST itself) is described in
``docs/retries-and-billing.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_runcomfy.client import (
    RequestNotFoundError,
    RunComfyError,
    SubmitOutcomeUnknownError,
    UnexpectedResponseError,
)
from airflow_provider_runcomfy.client._validation import input_fingerprint
from airflow_provider_runcomfy.client.outcome import Finality, Outcome, describe_cancel, finality
from airflow_provider_runcomfy.compat import AirflowFailException, task_state_store

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook

#: Key of the ``task_state_store`` entry that lets a retry re-attach to its job.
STATE_KEY = "runcomfy_request"

#: Writes of the request id after the paid submit (the first included), and the pause before the
#: second; each further pause doubles. The store is an API call through the supervisor.
RECORD_ATTEMPTS = 3
RECORD_BACKOFF_SECONDS = 0.5

OnUnknownSubmit = Literal["fail", "resubmit"]
ON_UNKNOWN_SUBMIT: tuple[OnUnknownSubmit, ...] = ("fail", "resubmit")


@dataclass(frozen=True)
class Intent:
    """What a try is about to pay for: recorded before the POST so a lost answer is never forgotten."""

    model_id: str
    fingerprint: str
    at: str

    @classmethod
    def new(cls, model_id: str, payload: dict[str, Any]) -> Intent:
        """The intent to submit ``payload`` to ``model_id`` now."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(model_id, input_fingerprint(model_id, payload), at)

    @classmethod
    def read(cls, value: object) -> Intent | None:
        """An intent from the store, or None for anything else."""
        if isinstance(value, dict) and all(
            isinstance(value.get(k), str) for k in ("model_id", "fingerprint")
        ):
            return cls(value["model_id"], value["fingerprint"], str(value.get("at") or "an unknown time"))
        return None

    def as_dict(self) -> dict[str, Any]:
        """The JSON the store keeps."""
        return {"model_id": self.model_id, "fingerprint": self.fingerprint, "at": self.at}

    def describe(self) -> str:
        """The words that let a user find the job: model, time, input fingerprint."""
        return f"sent to {self.model_id} at {self.at} (input fingerprint {self.fingerprint})"


@dataclass(frozen=True)
class EarlierJob:
    """What an earlier try of this task instance left: a job to wait on, an outcome to reuse, or nothing.

    Neither set means: nothing to re-attach to, submit.
    """

    request_id: str | None = None
    outcome: Outcome | None = None


class SubmitOnceMixin:
    """The operator side of "never pays twice": find an earlier try's job, or submit once and record it."""

    model_id: str
    reattach: bool
    on_unknown_submit: OnUnknownSubmit
    hook: RunComfyHook
    log: Any

    def find_earlier_job(self, context: Context, payload: dict[str, Any]) -> EarlierJob:
        """The job an earlier try of this task instance submitted for the same inputs, if any."""
        store = task_state_store(context) if self.reattach else None
        if store is None:
            return EarlierJob()
        record = store.get(STATE_KEY)
        if not isinstance(record, dict):
            return EarlierJob()
        fingerprint = input_fingerprint(self.model_id, payload)
        request_id = record.get("request_id")
        if not request_id:
            self._check_unknown_submit(Intent.read(record.get("intent")), fingerprint)
            return EarlierJob()
        if record.get("fingerprint") != fingerprint:
            self.log.info("Inputs changed since RunComfy request %s; submitting a new job.", request_id)
            return EarlierJob()
        return self._look_at(context, str(request_id))

    def submit_once(self, context: Context, payload: dict[str, Any], body: dict[str, Any]) -> str:
        """Record the intent, submit (paid), record the request id; the id to wait for.

        ``payload`` is the input as the user gave it: it is fingerprinted and recorded. ``body``
        is what is sent: storage paths signed or inlined (``sources``). A
        pre-signed URL is a credential and differs on every try, so it is never recorded.
        """
        store = task_state_store(context) if self.reattach else None
        # The connection is read (and the token checked) first: a missing connection must fail
        # here, not leave an intent behind that makes the next try stop and ask.
        self.hook.get_conn()
        intent = Intent.new(self.model_id, payload)
        if store is not None:
            # Before the POST: if this try dies waiting for the answer, the next one knows.
            store.set(STATE_KEY, {"intent": intent.as_dict()})
        try:
            request_id = self.hook.submit(self.model_id, body).request_id
        except SubmitOutcomeUnknownError as error:
            # The intent stays recorded: a retry or a clear stops instead of paying again.
            raise AirflowFailException(
                f"{error.message} The submit was {intent.describe()}; the task is not retried."
            ) from error
        except RunComfyError:
            # RunComfy refused it or it never left: no job exists, so a retry may submit.
            if store is not None:
                self._forget(store)
            raise
        self.log.info(
            "Submitted RunComfy request %s to %s (input fingerprint %s).",
            request_id,
            self.model_id,
            intent.fingerprint,
        )
        if store is not None:
            self._record(store, request_id, intent)
        context["ti"].xcom_push(key="request_id", value=request_id)
        return request_id

    # -- internals --------------------------------------------------------------------------------

    def _check_unknown_submit(self, intent: Intent | None, fingerprint: str) -> None:
        """An intent with no request id: an earlier POST's outcome is unknown. Stop, unless told not to."""
        if intent is None:
            return
        if intent.fingerprint != fingerprint:
            self.log.warning(
                "An earlier try's submit (%s) has an unknown outcome, but the inputs have changed "
                "since: submitting the new inputs as a new job.",
                intent.describe(),
            )
            return
        if self.on_unknown_submit == "resubmit":
            self.log.warning(
                "An earlier try's submit (%s) has an unknown outcome; on_unknown_submit='resubmit': "
                "submitting again. If that earlier job exists, it is billed too.",
                intent.describe(),
            )
            return
        raise AirflowFailException(
            f"An earlier try of this task submitted a job ({intent.describe()}) but did not learn "
            "its request id (the worker stopped or the answer was lost): RunComfy may have created "
            "and billed that job. Nothing was submitted now, so as not to pay twice. Look in your "
            f"RunComfy dashboard (Requests) for a {intent.model_id} request made around {intent.at}. "
            "To submit anyway, set on_unknown_submit='resubmit' on the task (or trigger a new DAG "
            "run) and run it again."
        )

    def _look_at(self, context: Context, request_id: str) -> EarlierJob:
        """Decide on an earlier try's job: only a provably failed, cancelled or expired one is replaced."""
        try:
            status = self.hook.get_status(request_id)
            if finality(status) is Finality.WAITING:
                return self._rejoin(context, request_id, str(status.status.value))
            result = self.hook.get_result(request_id)
        except RequestNotFoundError:
            self.log.info("RunComfy request %s of an earlier try has expired; submitting anew.", request_id)
            return EarlierJob()
        except UnexpectedResponseError as error:
            # An answer this version cannot read (a new state word?) proves nothing: wait on the job.
            self.log.warning("Could not read RunComfy request %s of an earlier try: %s", request_id, error)
            return self._rejoin(context, request_id, "unreadable")
        found = finality(result)
        if found is Finality.SUCCEEDED:
            self.log.info(
                "Reusing the outputs of RunComfy request %s of an earlier try; nothing is submitted.",
                request_id,
            )
            context["ti"].xcom_push(key="request_id", value=request_id)
            return EarlierJob(outcome=Outcome.from_result(result, self.model_id))
        if found in (Finality.FAILED, Finality.CANCELLED):
            self.log.info(
                "RunComfy request %s of an earlier try %s; submitting anew.", request_id, found.value
            )
            return EarlierJob()
        # Finished per /status, but /result has not written the outcome yet: it is still that job.
        return self._rejoin(context, request_id, str(getattr(result.status, "value", result.status)))

    def _rejoin(self, context: Context, request_id: str, state: str) -> EarlierJob:
        self.log.info(
            "Re-attaching to RunComfy request %s of an earlier try (%s); nothing is submitted.",
            request_id,
            state,
        )
        context["ti"].xcom_push(key="request_id", value=request_id)
        return EarlierJob(request_id=request_id)

    def _record(self, store: Any, request_id: str, intent: Intent) -> None:
        """Write the request id after the paid submit; if it cannot be, cancel the job and stop."""
        record = {"request_id": request_id, "fingerprint": intent.fingerprint, "intent": intent.as_dict()}
        problem: Exception | None = None
        for attempt in range(RECORD_ATTEMPTS):
            if attempt:
                time.sleep(RECORD_BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                store.set(STATE_KEY, record)
                return
            except Exception as error:  # whatever the store raises: the job exists and must not be lost
                problem = error
                self.log.warning(
                    "Could not record RunComfy request %s in the task's state store (attempt %d of %d): %s",
                    request_id,
                    attempt + 1,
                    RECORD_ATTEMPTS,
                    error,
                )
        fate = self._cancel_unrecorded(request_id)
        raise AirflowFailException(
            f"RunComfy request {request_id} was submitted ({intent.describe()}) but could not be "
            f"recorded in the task's state store ({type(problem).__name__}: {problem}). {fate} The task "
            "is not retried: a retry could not find this job and would pay for a new one. Check "
            f"request {request_id} in your RunComfy dashboard, then run the task again if needed."
        ) from problem

    def _cancel_unrecorded(self, request_id: str) -> str:
        try:
            return describe_cancel(request_id, self.hook.cancel(request_id).cancelled)
        except RunComfyError as error:
            return f"It could not be cancelled ({error.message}); it may run and be billed."

    def _forget(self, store: Any) -> None:
        try:
            store.delete(STATE_KEY)
        except Exception as error:  # a leftover intent only makes a retry stop and ask: safe
            self.log.warning("Could not clear the submit intent from the task's state store: %s", error)
