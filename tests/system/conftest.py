"""Fixtures for system tests: a real Airflow deployment on 127.0.0.1 (see ``deployment.py``).

``airflow_deployments.get(...)`` starts a deployment (or reuses the running one when the
settings match) and is session-scoped: starting one costs ~15 s, so tests and modules with
the same needs share it.  Only one deployment runs at a time: on 2 cores a second set of
scheduler, triggerer, DAG processor and API server would slow both down.  At the end of the
session every deployment is stopped and checked to have left no process behind.

Topologies: ``get(..., topology="celery")`` starts the CeleryExecutor topology (PostgreSQL,
Redis, two Celery workers, two triggerers; see ``deployment.py``) instead of the default
``"local"`` one.  A test that takes a ``topology`` argument is run once per topology
(module-scoped, so pytest runs a module's tests of one topology, then of the other: one
deployment at a time); ``@pytest.mark.topologies("local")`` limits a test to some of them,
and ``RUNCOMFY_SYSTEM_TOPOLOGIES=celery`` (comma-separated) the whole session.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # deployment.py, whatever pytest's import mode

from deployment import FAST_ORPHAN_RESET, TOPOLOGIES, AirflowDeployment

DAGS_FOLDER = Path(__file__).parent / "dags"

_POOL_KEY = pytest.StashKey["DeploymentPool"]()
_TIMINGS_KEY = pytest.StashKey[list[tuple[Any, ...]]]()
#: Seconds spent per topology (tests' setup + call + teardown), for the terminal summary.
_TOPOLOGY_SECONDS_KEY = pytest.StashKey[dict[str, float]]()


def selected_topologies() -> tuple[str, ...]:
    """The topologies this session runs (``RUNCOMFY_SYSTEM_TOPOLOGIES``, default all)."""
    wanted = os.environ.get("RUNCOMFY_SYSTEM_TOPOLOGIES", "").strip()
    if not wanted:
        return TOPOLOGIES
    chosen = tuple(t.strip() for t in wanted.split(",") if t.strip())
    unknown = set(chosen) - set(TOPOLOGIES)
    if unknown:
        raise pytest.UsageError(f"RUNCOMFY_SYSTEM_TOPOLOGIES: unknown {sorted(unknown)}; use {TOPOLOGIES}")
    return chosen


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "topologies(*names): run this system test on these topologies only (default: all)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test that takes ``topology`` over the topologies, module-scoped."""
    if "topology" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("topologies")
    allowed = marker.args if marker else TOPOLOGIES
    topologies = [t for t in selected_topologies() if t in allowed]
    metafunc.parametrize("topology", topologies, scope="module")


class DeploymentPool:
    """Starts deployments on demand, one at a time, and reuses one whose settings match."""

    def __init__(self, config: pytest.Config) -> None:
        self.current: AirflowDeployment | None = None
        self._key: Any = None
        self._timings = config.stash.setdefault(_TIMINGS_KEY, [])

    def get(
        self,
        dags_folder: str | Path = DAGS_FOLDER,
        env_extra: dict[str, str] | None = None,
        parallelism: int = 4,
        topology: str = "local",
        **kwargs: Any,
    ) -> AirflowDeployment:
        """A started deployment with these settings (see ``AirflowDeployment`` for the arguments).

        ``topology``: ``"local"`` (LocalExecutor, SQLite) or ``"celery"`` (CeleryExecutor,
        Redis, PostgreSQL, two workers, two triggerers).
        """
        key = (
            str(Path(dags_folder).resolve()),
            sorted((env_extra or {}).items()),
            parallelism,
            topology,
            sorted(kwargs.items()),
        )
        if self.current is not None and self._key == key and self.current.running:
            return self.current
        self.stop()
        deployment = AirflowDeployment(dags_folder, env_extra, parallelism, topology=topology, **kwargs)
        deployment.start()
        self._timings.append(
            (f"deployment start, {topology}, parallelism={parallelism}", deployment.timings["start"])
        )
        print(
            f"\n[airflow] deployment started in {deployment.timings['start']:.1f}s at {deployment.base_url}"
        )
        self.current, self._key = deployment, key
        return deployment

    def stop(self) -> None:
        """Stop the running deployment (raises if a process of it survives)."""
        if self.current is not None:
            deployment, self.current, self._key = self.current, None, None
            deployment.stop()
            self._timings.append((f"deployment stop, {deployment.topology}", deployment.timings["stop"]))
            print(f"\n[airflow] deployment stopped in {deployment.timings['stop']:.1f}s")


@pytest.fixture(scope="session")
def airflow_deployments(request: pytest.FixtureRequest) -> Iterator[DeploymentPool]:
    pool = DeploymentPool(request.config)
    request.config.stash[_POOL_KEY] = pool
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def airflow_deployment(airflow_deployments: DeploymentPool) -> AirflowDeployment:
    """The default deployment: ``tests/system/dags``, parallelism 4, no extra environment."""
    return airflow_deployments.get()


@pytest.fixture(scope="module")
def airflow(
    airflow_deployments: DeploymentPool, runcomfy_emulator_server: Any, topology: str
) -> AirflowDeployment:
    """The RunComfy scenarios' deployment, per topology: one executor slot, ``runcomfy_default``
    pointing at the session's emulator (``test_runcomfy_*.py`` share it).
    """
    env = {**runcomfy_emulator_server.airflow_conn_env(), **FAST_ORPHAN_RESET}
    return airflow_deployments.get(env_extra=env, parallelism=1, topology=topology)


@pytest.fixture
def emulator(airflow: AirflowDeployment, runcomfy_emulator: Any) -> Any:
    """The emulator, reset for this test (no jobs, rules or journal)."""
    return runcomfy_emulator


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, attach the tail of every component's log to the test report."""
    report = yield
    pool = item.config.stash.get(_POOL_KEY, None)
    if report.failed and pool is not None and pool.current is not None:
        report.sections.append(("airflow components", pool.current.diagnostics()))
    return report


@pytest.fixture
def record_timing(request: pytest.FixtureRequest):
    """``record_timing(label, seconds)``: printed now and again in the terminal summary.

    ``unit`` (default ``"s"``) lets a test report another figure the same way, e.g.
    ``record_timing("submits", 50, unit="")``.
    """
    timings = request.config.stash.setdefault(_TIMINGS_KEY, [])

    def record(label: str, seconds: float, unit: str = "s") -> None:
        line = f"{request.node.name}: {label}"
        timings.append((line, seconds, unit))
        print(f"[timing] {line}: {seconds:.1f}{unit}")

    return record


def _topology_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    topology = callspec.params.get("topology") if callspec is not None else None
    # The harness's default for smoke tests and others without the parameter; a test whose
    # topologies are all deselected (RUNCOMFY_SYSTEM_TOPOLOGIES) is skipped with NOTSET here.
    return topology if isinstance(topology, str) and topology else "local"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the system tests topology by topology, across modules: few deployment starts.

    Within a module pytest already groups the tests of a module-scoped parameter; this makes
    the order ``local`` (every module), then ``celery`` (every module), so that modules whose
    deployments have the same settings share one.  Other tests keep their order, first.
    """
    system = [item for item in items if "system" in item.keywords]
    if not system:
        return
    others = [item for item in items if "system" not in item.keywords]
    order = {name: n for n, name in enumerate(TOPOLOGIES)}
    system.sort(
        key=lambda item: (order.get(_topology_of(item), len(order)), _shares_the_runcomfy_deployment(item))
    )
    items[:] = others + system


def _shares_the_runcomfy_deployment(item: pytest.Item) -> bool:
    """Whether the test runs on the shared RunComfy deployment (this file's ``airflow`` fixture).

    Such modules run after those with a deployment of their own, all together, so that they
    share one start per topology (~30 s local, ~55 s celery) instead of one per run of them.
    """
    module = getattr(item, "module", None)
    return "airflow" in getattr(item, "fixturenames", ()) and not hasattr(module, "airflow")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Add each test's wall time (deployment start and stop included) to its topology's total."""
    t0 = time.monotonic()
    try:
        return (yield)
    finally:
        if "system" in item.keywords:
            totals = item.config.stash.setdefault(_TOPOLOGY_SECONDS_KEY, defaultdict(float))
            totals[_topology_of(item)] += time.monotonic() - t0


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS_KEY, [])
    if timings:
        terminalreporter.section("system test timings")
        for line, seconds, *unit in timings:
            terminalreporter.write_line(f"{seconds:7.1f}{unit[0] if unit else 's':1}  {line}")
    totals = config.stash.get(_TOPOLOGY_SECONDS_KEY, {})
    if totals:
        terminalreporter.section("system test time per topology")
        for topology, seconds in sorted(totals.items()):
            terminalreporter.write_line(f"{seconds:7.1f}s  {topology}")
