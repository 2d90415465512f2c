"""Who may submit for a batch: one execution at a time, the newest one.

Airflow can run a try it believes lost beside the new one, and two executions can carry
the same try number (``airflow tasks test`` on an existing run, a try whose state was
reset). So the owner is not a try number: every execution that starts a batch task
(``execute``) writes ``_ledger/owner.json`` with a fresh random id and carries that id
through its waits. Before each submit wave an execution writes its intents, then reads
the owner record, and sends the wave only if the record still names it; otherwise it
withdraws those intents (compare-and-set, so nothing the newer owner did is undone) and
stops with ``OwnershipLost``. The newer owner writes its record before it reads the
ledger, so every intent the older one could still send is in what the newer one reads.

**The bound on a paused stale worker.** An execution paused between its last owner
check and its submits (a stopped VM, a long GC) can still send that one wave: at most
``submit_concurrency`` items, whose intents were durable before the check. The newer
owner never sends those items itself: it waits ``INTENT_GRACE`` seconds for their
request ids (or their withdrawal) and then reports them ``unknown``. A request id that
arrives later still attaches to its item. Nothing is paid twice; at worst an item is
reported ``unknown`` while its job ran.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_runcomfy.batch import ledger as L

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: How long a newer owner leaves another execution's fresh intents alone: longer than a submit's
#: answer can take (the client's read timeout is 60 s, but a submit answers in well under a second;
#: a stale worker that overran this is the documented bound, above).
INTENT_GRACE = 45.0


class OwnershipLost(RuntimeError):
    """A newer execution of this batch task took over: this one stops before its next submit."""


@dataclass(frozen=True)
class Owner:
    """This execution's claim on a batch.

    :param ledger_dir: the ledger's folder (``{task folder}/_ledger``).
    :param id: this execution's random id (never the try number).
    """

    ledger_dir: ObjectStoragePath
    id: str

    @classmethod
    def take(cls, ledger_dir: ObjectStoragePath, *, try_number: int | None = None) -> Owner:
        """Become the owner (a new execution): durable before the ledger is read."""
        owner = cls(ledger_dir, uuid.uuid4().hex)
        record = {
            "owner": owner.id,
            "since": time.time(),
            "try_number": try_number,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        L.write_durably(ledger_dir, L.OWNER, L.sealed_json(record))
        return owner

    def current(self) -> dict[str, Any] | None:
        """The owner record as stored now (None when absent or unreadable)."""
        fs = self.ledger_dir.fs
        try:
            return L.read_sealed_json(fs, f"{self.ledger_dir.path}/{L.OWNER}", str(self.ledger_dir))
        except L.LedgerReadError:
            return None

    def check(self) -> None:
        """Raise ``OwnershipLost`` unless the owner record still names this execution."""
        record = self.current()
        if record is not None and record.get("owner") == self.id:
            return
        if record is None:
            who = "the owner record is missing or unreadable"
        else:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(record.get("since") or 0)))
            who = (
                f"another execution took it over at {since} (host {record.get('host')}, pid "
                f"{record.get('pid')}, try {record.get('try_number')})"
            )
        raise OwnershipLost(
            f"This execution no longer owns the batch ledger {self.ledger_dir}: {who}. It stops before "
            "submitting anything more; what it recorded stays in the ledger and the newer execution "
            "re-attaches to its jobs in flight. (Two executions of one batch task at once: a worker "
            "Airflow believed lost, or the task run again while it ran.)"
        )

    def describe(self) -> str:
        return json.dumps({"owner": self.id})
