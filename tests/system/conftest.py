"""Fixtures for system tests: a real Airflow deployment on 127.0.0.1 (see ``deployment.py``).

``airflow_deployments.get(...)`` starts a deployment (or reuses the running one when the
settings match) and is session-scoped: starting one costs ~15 s, so tests and modules with
the same needs share it.  Only one deployment runs at a time: on 2 cores a second set of
scheduler, triggerer, DAG processor and API server would slow both down.  At the end of the
session every deployment is stopped and checked to have left no process behind.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # deployment.py, whatever pytest's import mode

from deployment import AirflowDeployment

DAGS_FOLDER = Path(__file__).parent / "dags"

_POOL_KEY = pytest.StashKey["DeploymentPool"]()
_TIMINGS_KEY = pytest.StashKey[list[tuple[str, float]]]()


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
        **kwargs: Any,
    ) -> AirflowDeployment:
        """A started deployment with these settings (see ``AirflowDeployment`` for the arguments)."""
        key = (
            str(Path(dags_folder).resolve()),
            sorted((env_extra or {}).items()),
            parallelism,
            sorted(kwargs.items()),
        )
        if self.current is not None and self._key == key and self.current.running:
            return self.current
        self.stop()
        deployment = AirflowDeployment(dags_folder, env_extra, parallelism, **kwargs)
        deployment.start()
        self._timings.append((f"deployment start, parallelism={parallelism}", deployment.timings["start"]))
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
            self._timings.append(("deployment stop", deployment.timings["stop"]))
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


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    timings = config.stash.get(_TIMINGS_KEY, [])
    if timings:
        terminalreporter.section("system test timings")
        for line, seconds, *unit in timings:
            terminalreporter.write_line(f"{seconds:7.1f}{unit[0] if unit else 's':1}  {line}")
