"""The RunComfy plugin for Airflow's API server and UI: outputs in the UI, a connection test that works.

``plugin.RunComfyPlugin`` is what Airflow loads (through the ``airflow.plugins``
entry point and the provider info). It adds to the API server, under
``/runcomfy``:

- an **outputs view** of a task instance (inputs beside outputs, state, request
  id, cost) shown as a "RunComfy outputs" tab of the task instance, and a
  **gallery** of a DAG run (every RunComfy task, every batch manifest line,
  filtered and paged) shown as a tab of the run; pictures are streamed through
  the API server, capped, and only to users Airflow authorises for the DAG;
- a narrow fix for the connection list's *Test* button (``connection_test``).

Nothing here is imported by DAG parsing or by a task: the package stays light,
the web application is built on the API server's first request to it.
"""
