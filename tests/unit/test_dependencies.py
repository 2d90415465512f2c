"""The declared dependencies are the imported ones: nothing arrives by accident, nothing is dead weight.

A package that only reaches us through Airflow today can vanish from Airflow's
requirements tomorrow; a declared package nobody imports costs every user an
install. So each third-party import of the runtime package must be declared in
``[project.dependencies]`` (the emulator's pytest fixtures in the ``emulator``
extra), and each declared runtime dependency must be imported somewhere.
Imports guarded by ``except ImportError`` are optional integrations (OpenLineage)
and need no declaration.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "airflow_provider_runcomfy"
#: Modules whose imports belong to an extra rather than to the base install (a folder: all of it).
EXTRA_OF_MODULE = {"emulator/pytest_plugin.py": "emulator"}
#: Imports made only when an optional integration calls us: the OpenLineage listener asks
#: ``operators/lineage.py`` (and ``operators/_batch_finishing.py``, both through ``outputs/lineage.py``) for facets only where
#: the openlineage provider (and its attrs) is
#: installed, so a user without it installs none of them.
_OPENLINEAGE = {
    "apache-airflow-providers-openlineage",
    "apache-airflow-providers-common-compat",
    "attrs",
}
OPTIONAL_INTEGRATIONS = {
    "operators/lineage.py": _OPENLINEAGE,
    "outputs/lineage.py": _OPENLINEAGE,
    "operators/_batch_finishing.py": _OPENLINEAGE,
}


def _extra_of(module: str) -> str:
    return next((extra for prefix, extra in EXTRA_OF_MODULE.items() if module.startswith(prefix)), "")


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0]) for req in requirements}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _guarded(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try: ... except ImportError`` (optional integrations)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            for inner in node.body:
                lines.update(n.lineno for n in ast.walk(inner) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lines


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    """Top-level module -> distributions; read once (it scans every installed distribution)."""
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    """The distribution an import comes from (``airflow.providers.x`` is its own provider)."""
    parts = module.split(".")
    if parts[0] == "airflow":
        if len(parts) > 2 and parts[1] == "providers":
            # airflow.providers.common.compat is apache-airflow-providers-common-compat
            name = parts[2:4] if parts[2] == "common" and len(parts) > 3 else parts[2:3]
            return "apache-airflow-providers-" + "-".join(name).replace("_", "-")
        return "apache-airflow"
    found = _packages_distributions().get(parts[0])
    assert found, f"no installed distribution provides {module!r}"
    return _normalise(found[0])


@functools.cache
def imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the modules of the package that import it (unguarded imports only)."""
    imports: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            if node.lineno in guarded:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == PACKAGE.name:
                    continue
                imports.setdefault(_distribution(module), set()).add(str(path.relative_to(PACKAGE)))
    return imports


def test_every_imported_package_is_declared() -> None:
    project = _project()
    base = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    undeclared = {}
    for distribution, modules in imported_distributions().items():
        for module in modules:
            if distribution in OPTIONAL_INTEGRATIONS.get(module, set()):
                continue
            declared = base | extras.get(_extra_of(module), set())
            if distribution not in declared:
                undeclared.setdefault(distribution, []).append(module)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_declared_runtime_dependency_is_imported() -> None:
    imported = set(imported_distributions())
    unused = _names(_project()["dependencies"]) - imported
    assert not unused, f"declared in [project.dependencies] but never imported: {sorted(unused)}"


#: The environment each supported Airflow is tested in: locks resolved as of each release
#: (``scripts/compat``), and the main venv's constraints (``scripts/bootstrap``, the newest).
LOCKS = [*sorted((REPO / "requirements").glob("airflow-3.*.txt")), REPO / "requirements" / "constraints.txt"]


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            pins[_normalise(name.split("[")[0])] = version.strip()
    return pins


def test_every_tested_airflow_satisfies_every_declared_dependency() -> None:
    """A lower bound raised past what an older Airflow ships (SQLAlchemy 2.0 on 3.0) fails here first."""
    from packaging.requirements import Requirement

    unmet = []
    for lock in LOCKS:
        pins = _pins(lock)
        for declared in _project()["dependencies"]:
            requirement = Requirement(declared)
            pinned = pins.get(_normalise(requirement.name))
            assert pinned, f"{lock.name} pins no {requirement.name}"
            if not requirement.specifier.contains(pinned, prereleases=True):
                unmet.append(f"{lock.name}: {requirement.name}=={pinned} does not satisfy {declared}")
    assert not unmet, unmet


def test_the_airflow_lower_bound_is_the_oldest_release_tested() -> None:
    from packaging.requirements import Requirement

    (airflow_requirement,) = (
        Requirement(d) for d in _project()["dependencies"] if Requirement(d).name == "apache-airflow"
    )
    tested = sorted(tuple(int(p) for p in _pins(lock)["apache-airflow"].split(".")[:2]) for lock in LOCKS)
    assert len(LOCKS) == 4 and tested == [(3, 0), (3, 1), (3, 2), (3, 3)]
    assert str(airflow_requirement.specifier) == ">=3.0"
