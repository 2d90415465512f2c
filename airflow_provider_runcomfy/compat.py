"""Every difference between the Airflow 3 releases the provider supports (3.0 to 3.3), in one place.

The rest of the provider imports Airflow's authoring names from here when their home
moved between releases, and asks here what a release can do. Where a release lacks
something the provider's promises rest on, this module supplies the stand-in:

* ``task_state_store`` (3.3, kept across retries and clears) holds the record that lets
  a retry re-attach to its paid job. Below 3.3, :class:`VariableStateStore` keeps the
  same record in an Airflow Variable per task instance: the one durable store every
  worker reaches through the Task SDK on every executor, with or without ``output_dir``.
* Before 3.1.1 a retry of a task that failed *after resuming from a deferral* is handed
  that earlier try's trigger event again instead of starting at ``execute`` (Airflow keeps
  ``next_method``/``next_kwargs``: apache/airflow#56704, fixed in 3.1.1 by #56731), so it
  can never re-attach. :func:`note_deferral` and :func:`resumes_an_earlier_try` let the
  operator notice and start the try from the beginning, as 3.1.1 does.

See ``docs/compatibility.md`` for the feature-by-version table.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import airflow

if TYPE_CHECKING:
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
else:
    try:  # 3.2+
        from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
    except ImportError:  # 3.0, 3.1
        from airflow.exceptions import AirflowFailException, TaskDeferred

if TYPE_CHECKING:
    from airflow.sdk import BaseHook as _AirflowBaseHook
else:
    try:  # 3.1+
        from airflow.sdk import BaseHook as _AirflowBaseHook
    except ImportError:  # 3.0
        from airflow.hooks.base import BaseHook as _AirflowBaseHook

__all__ = [
    "AIRFLOW_RELEASE",
    "AIRFLOW_VERSION",
    "DEFERRED_IN_TRY_KEY",
    "HAS_PLUGIN_TABS",
    "HAS_TASK_STATE_STORE",
    "RETRY_RESUMES_OLD_DEFERRAL",
    "AirflowFailException",
    "BaseHook",
    "StateStore",
    "TaskDeferred",
    "VariableStateStore",
    "aget_connection",
    "airflow_conf",
    "has_fs",
    "note_deferral",
    "omit_secret_values_from_test_log",
    "resumes_an_earlier_try",
    "task_state_store",
]


def _patch_release(version: str) -> tuple[int, int, int]:
    """``(major, minor, patch)`` of a version string such as ``3.1.8``, ``3.1.0rc1`` or ``3.0.6.dev0``."""
    parts = [*version.split("."), "0", "0"][:3]
    major, minor, patch = (int("".join(itertools.takewhile(str.isdigit, part)) or 0) for part in parts)
    return major, minor, patch


#: The running Airflow's ``(major, minor, patch)``.
AIRFLOW_RELEASE = _patch_release(airflow.__version__)
#: The running Airflow's ``(major, minor)``.
AIRFLOW_VERSION = AIRFLOW_RELEASE[:2]
#: ``context["task_state_store"]`` (AIP-103): a per-task-instance store kept across retries and clears.
HAS_TASK_STATE_STORE = AIRFLOW_VERSION >= (3, 3)
#: Plugin ``external_views`` shown as task-instance and DAG-run tabs in the UI.
HAS_PLUGIN_TABS = AIRFLOW_VERSION >= (3, 1)
#: A retry of a task that failed after resuming from a deferral resumes that deferral again
#: (the earlier try's ``next_method`` and event) instead of calling ``execute``: Airflow's
#: execution API cleared ``next_method``/``next_kwargs`` on retry, failure and success only
#: from 3.1.1 (apache/airflow#56704, fixed by #56731; 3.0.6 and 3.1.0 keep them).
RETRY_RESUMES_OLD_DEFERRAL = AIRFLOW_RELEASE < (3, 1, 1)
#: XCom key of the try that deferred (pushed only where ``RETRY_RESUMES_OLD_DEFERRAL``).
DEFERRED_IN_TRY_KEY = "runcomfy_deferred_in_try"


def airflow_conf() -> Any:
    """Airflow's configuration: ``airflow.sdk.conf`` from 3.2, ``airflow.configuration.conf`` before."""
    try:
        from airflow.sdk import conf
    except ImportError:  # 3.0, 3.1
        from airflow.configuration import conf as core_conf

        return core_conf
    return conf


def has_fs(scheme: str) -> bool:
    """Whether an Airflow provider registers a filesystem for ``scheme`` (``has_fs`` moved in 3.1)."""
    try:
        from airflow.sdk.io import has_fs as sdk_has_fs
    except ImportError:  # 3.0: in the core package (airflow.io)
        return bool(importlib.import_module("airflow.io").has_fs(scheme))
    return bool(sdk_has_fs(scheme))


class _MaskSecretValuesOmitted:
    """A stand-in for the in-process comms' logger that never prints what a ``MaskSecret`` masks.

    It logs the same lines; only a ``MaskSecret`` message in them is replaced by its type,
    as Airflow's supervisor already does on its side ("body omitted").
    """

    def __init__(self, log: Any) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._log, name)
        if not callable(method):
            return method

        def log_without_secrets(*args: Any, **kwargs: Any) -> Any:
            kwargs = {key: _without_secret_value(value) for key, value in kwargs.items()}
            return method(*args, **kwargs)

        return log_without_secrets


def _without_secret_value(value: Any) -> Any:
    if type(value).__name__ == "MaskSecret":
        return "MaskSecret (value omitted)"
    return value


def omit_secret_values_from_test_log() -> None:
    """Keep the token out of ``airflow dags test``'s debug log; called before every connection read.

    Under ``airflow dags test`` (``dag.test()``) a task talks to an in-process supervisor
    whose ``InProcessSupervisorComms.send`` logs every message at debug level, body
    included, and reading a connection sends ``MaskSecret`` messages carrying its password
    (Airflow's own connection code sends them: the provider calls no ``mask_secret`` for
    the token). Airflow 3.0's ``dags test`` prints debug lines, so every run printed the
    token in clear; 3.1 to 3.3 print it once the logging level is DEBUG. A real worker's
    comms log no message bodies, so nothing changes there.

    The in-process comms' logger is wrapped (once; it then covers every later message of
    the task, e.g. a pre-signed URL's signature handed to the masker): the messages still
    go out, so the value is still masked everywhere, but the debug line names the message
    type instead of the value.
    """
    supervisor = sys.modules.get("airflow.sdk.execution_time.supervisor")
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    in_process = getattr(supervisor, "InProcessSupervisorComms", None)
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    if in_process is None or not isinstance(comms, in_process):
        return
    log = getattr(comms, "log", None)
    if log is not None and not isinstance(log, _MaskSecretValuesOmitted):
        comms.log = _MaskSecretValuesOmitted(log)


class BaseHook(_AirflowBaseHook):
    """Airflow's ``BaseHook`` (``airflow.sdk`` from 3.1, ``airflow.hooks.base`` on 3.0).

    Its connection read first calls :func:`omit_secret_values_from_test_log`, so that a
    hook built on it never has its token printed by ``airflow dags test``.
    """

    @classmethod
    def get_connection(cls, conn_id: str) -> Any:
        omit_secret_values_from_test_log()
        return super().get_connection(conn_id)


async def aget_connection(hook: Any, conn_id: str) -> Any:
    """The connection, read without blocking the event loop (``BaseHook.aget_connection`` arrived in 3.1).

    On 3.0 the Task SDK's connection lookup is synchronous and, in the triggerer, talks to
    the supervisor through ``async_to_sync``: it must run under asgiref's ``sync_to_async``
    (Airflow's own instruction in 3.0's triggerer), not in a plain thread.
    """
    omit_secret_values_from_test_log()
    if hasattr(hook, "aget_connection"):
        return await hook.aget_connection(conn_id)
    from asgiref.sync import sync_to_async

    return await sync_to_async(hook.get_connection)(conn_id)


def note_deferral(context: Mapping[str, Any]) -> None:
    """Before ``defer()``: note which try deferred, where a retry may be handed its event (< 3.1.1).

    An XCom of the task instance: pushed before the deferral, it survives it, and the
    releases that hand a retry the old event do not clear XComs for that retry either
    (they skip the clearing when ``next_method`` is set). Nothing is written on 3.1.1+.
    """
    ti: Any = context.get("ti")
    if not RETRY_RESUMES_OLD_DEFERRAL or getattr(ti, "try_number", None) is None:
        return
    ti.xcom_push(key=DEFERRED_IN_TRY_KEY, value=int(ti.try_number))


def resumes_an_earlier_try(context: Mapping[str, Any]) -> bool:
    """Whether this resume carries the trigger event of an earlier try (Airflow < 3.1.1 only).

    True when the try that deferred (:func:`note_deferral`) is not this one: the earlier try
    resumed, failed, and Airflow handed its ``next_method`` and event to this retry. The
    caller then runs the try from ``execute``, as Airflow 3.1.1 and later do. False on
    3.1.1+, without a task instance, and when no try was noted (a deferral made before this
    provider version): then the event is used as before.
    """
    ti: Any = context.get("ti")
    if not RETRY_RESUMES_OLD_DEFERRAL or getattr(ti, "try_number", None) is None:
        return False
    deferred_in = ti.xcom_pull(task_ids=ti.task_id, key=DEFERRED_IN_TRY_KEY, map_indexes=ti.map_index)
    if deferred_in is None:
        return False
    try:
        return int(deferred_in) != int(ti.try_number)
    except (TypeError, ValueError):
        return False


class StateStore(Protocol):
    """What the provider uses of ``task_state_store``: JSON values by key, for one task instance."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


def task_state_store(context: Mapping[str, Any]) -> StateStore | None:
    """The task instance's durable store: Airflow's own on 3.3, an Airflow Variable below.

    None where there is none to have: on 3.3 a context without the store (a bare
    ``execute`` call in a test), below 3.3 a context without a task instance.
    """
    store = context.get("task_state_store")
    if store is not None or HAS_TASK_STATE_STORE:
        return store
    ti = context.get("ti")
    if ti is None:
        return None
    return VariableStateStore(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))


class StateStoreWriteError(RuntimeError):
    """A write to the Variable-backed store did not reach the metadata DB."""


class VariableStateStore:
    """``task_state_store`` for Airflow 3.0-3.2: one Airflow Variable per task instance and key.

    Why a Variable: it lives in the metadata DB (so it survives retries, clears, worker
    loss and a moved worker), every worker reaches it through the Task SDK's API on every
    executor, and it needs no ``output_dir``. The Variable's name is a digest of the task
    instance and the key (names are limited to 250 characters; dag, run and task ids may
    each be that long); its value repeats the identity in clear, so that a user can see
    whose record it is, and a read checks it.

    The Task SDK's ``Variable.set``/``delete`` log a refused write instead of raising, so
    each write is read back: a record that did not reach the DB raises, as the 3.3 store
    would, and the caller's rules for a failed write apply.

    Records are kept after success, as on 3.3, so that a cleared task reuses its paid
    outputs; ``docs/compatibility.md`` says how to prune them.
    """

    #: Prefix of the Variables this store writes (to find or prune them).
    PREFIX = "runcomfy_state_"

    def __init__(self, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> None:
        self.identity: dict[str, Any] = {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": -1 if map_index is None else int(map_index),
        }

    def variable_name(self, key: str) -> str:
        """The Variable that holds ``key`` for this task instance."""
        who = json.dumps([self.identity, key], sort_keys=True)
        return self.PREFIX + hashlib.sha256(who.encode()).hexdigest()[:40]

    def get(self, key: str, default: Any = None) -> Any:
        from airflow.sdk import Variable

        name = self.variable_name(key)
        raw = Variable.get(name, default=None)
        if raw is None:
            return default
        try:
            stored = json.loads(raw)
        except (TypeError, ValueError):
            stored = None
        if not isinstance(stored, dict) or stored.get("task_instance") != self.identity:
            # Never read as "nothing was paid for": that would submit and pay again.
            raise AirflowFailException(
                f"The Airflow Variable {name}, where this task instance keeps its RunComfy re-attach "
                "record, does not hold a record of this task instance (it was edited or damaged). "
                "Nothing was submitted. Check the RunComfy dashboard (Requests) for a job of this "
                "task, then delete the Variable and run the task again."
            )
        return stored.get("value", default)

    def set(self, key: str, value: Any) -> None:
        from airflow.sdk import Variable

        name = self.variable_name(key)
        stored = {"task_instance": self.identity, "key": key, "value": value}
        text = json.dumps(stored, sort_keys=True)
        ti = self.identity
        where = f"{ti['dag_id']} / {ti['run_id']} / {ti['task_id']}" + (
            f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""
        )
        Variable.set(
            name,
            text,
            description=f"RunComfy provider: '{key}' of task instance {where} (kept across retries; Airflow < 3.3).",
        )
        if Variable.get(name, default=None) != text:
            raise StateStoreWriteError(f"Airflow Variable {name} could not be written")

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        name = self.variable_name(key)
        Variable.delete(name)
        if Variable.get(name, default=None) is not None:
            raise StateStoreWriteError(f"Airflow Variable {name} could not be deleted")
