"""Keeping RunComfy's outputs: copies in your own storage, a manifest of a batch, a contact sheet.

- ``storage``: copy a task's output files to ``output_dir`` (any ``ObjectStoragePath``),
  atomically, under deterministic names, skipping copies an earlier try already made.
- ``manifest``: one JSON line per item of a mapped RunComfy task, failures included.
- ``contact_sheet``: a PNG of inputs beside outputs that a person can glance at.

The operators use ``storage`` when ``output_dir`` is set; the other two are for
your own batch DAGs (see ``dags_examples/runcomfy_batch_enrichment.py``). Import
the submodules directly; nothing heavy is imported here.
"""
