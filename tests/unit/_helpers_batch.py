"""What the batch tests build again and again: a worker part's view of a batch, its ledger read back.

``open_batch`` is ``BatchRun`` as the worker opens it (the ledger loaded from ``folder``),
and ``ready`` records every item as ready to submit. (``queued_emu`` and ``queued_client``,
for tests whose jobs must stay queued, are fixtures in ``conftest.py``.)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.engine import BatchRun
from airflow_provider_runcomfy.batch.items import make_items

LOG = logging.getLogger("batch-tests")


def open_batch(
    model_id: str,
    folder: Path | ObjectStoragePath,
    inputs: Sequence[dict[str, Any]],
    *,
    max_in_flight: int = 10,
    resubmit_unknown: bool = False,
) -> BatchRun:
    """The batch of ``inputs`` over the ledger in ``folder`` (a local path or ``file://`` URI)."""
    path = folder if isinstance(folder, ObjectStoragePath) else ObjectStoragePath(f"file://{folder}")
    return BatchRun(
        model_id,
        make_items(model_id, list(inputs)),
        L.Ledger(path, model_id).load(),
        path,
        max_in_flight=max_in_flight,
        max_output_bytes=1 << 20,
        resubmit_unknown=resubmit_unknown,
        log=LOG,
    )


def ready(run: BatchRun) -> BatchRun:
    """Every item recorded as ready to submit, as the worker does before its first refill."""
    run.ledger.append([{"key": i.key, "index": i.index, "state": L.READY} for i in run.items])
    return run
