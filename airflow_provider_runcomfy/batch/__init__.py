"""One model over many inputs in one task instance: the machinery behind ``RunComfyBatchOperator``.

RunComfy has no batch API, so the provider does client-side what a vendor
batch API does server-side:

- ``items``: the inputs (a list, or a JSON-lines file anywhere ``ObjectStoragePath``
  reaches), each with a fingerprint that survives reordering and retries;
- ``ledger``: the durable per-item record (intent before the paid submit, request id
  right after, outcome, kept copies) in ``output_dir`` -- never in the metadata DB;
- ``transitions``: which state an item may go to from which (one table), and the one
  builder of the ledger events that change it;
- ``window``: the one poll loop over the jobs in flight, shared by the trigger and the
  blocking mode, and the rule of when to wake the worker to refill;
- ``engine``: what the worker does between waits -- check, submit, record, copy;
- ``step``: what comes next after a worker part -- finish, wait (for what, until when), fail;
- ``pacing``: how fast submits go, slowed by 429s and recovering;
- ``progress``: the log line a person follows;
- ``report``: the manifest, the return value and the failure policy's verdict.

Nothing heavy is imported here, and nothing of Airflow anywhere in ``batch/``: the
operator (``operators/batch.py``) maps what it decides to Airflow.
"""
