"""Pre-flight overlaps submitting: a worker part checks a share of the new inputs, not all of them.

2,000 inputs on a host this worker cannot resolve: the first part checks the first share
(real pre-flight, ``preflight="warn"``: unreachable hosts are a warning, the items stay
ready), the rest wait for later parts, so the first submits need not wait for 2,000 checks.
How long that takes is measured in ``bench/``, not asserted here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from _helpers_batch import open_batch

from airflow_provider_runcomfy.batch import ledger as L
from airflow_provider_runcomfy.batch.items import prepare_items
from airflow_provider_runcomfy.models import NANO_BANANA_EDIT as MODEL
from airflow_provider_runcomfy.models import validate_input

LOG = logging.getLogger("batch-overlap")
N = 2_000
SHARE = 256


def test_a_worker_part_checks_a_share_of_the_new_inputs_and_the_rest_later(tmp_path: Path) -> None:
    inputs = [
        {"prompt": f"item {n}", "image_urls": [f"https://unresolvable.invalid/{n}.png"]} for n in range(N)
    ]
    run = open_batch(MODEL, tmp_path, inputs)

    def prepare(items):  # type: ignore[no-untyped-def]
        return prepare_items(
            MODEL, items, for_submit=False, preflight="warn", sign_expiry=None, api_base_url=None, log=LOG
        )

    assert run.check(prepare, validate_input, limit=SHARE) == 0
    assert (run.ready_count(), run.unchecked_count()) == (SHARE, N - SHARE)
    assert [r.index for r in L.Ledger(run.folder, MODEL).load()] == list(range(SHARE))  # in input order
    while run.unchecked_count():
        run.check(prepare, validate_input, limit=SHARE)
    assert run.ready_count() == N
