"""The package's layers hold: nothing below the operators imports them or the UI plugin, and no import runs in a circle.

Data flows one way (operator -> hook -> client -> HTTP); an import that runs back up a
layer, or two modules that import each other, is how a decision ends up written twice. The
imports are read from the source (``ast``), every one of them: also those made inside a
function or only for type checking, since each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_runcomfy"
NAME = PACKAGE.name
#: The layers below the Airflow edge: none of them may import from ``UPPER``.
LOWER = ("hooks", "client", "models", "sources", "outputs", "batch")
UPPER = ("plugins", "operators")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (its file, whether it is a package's ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from x import y`` is ``x.y`` when ``y`` is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    targets.add(full if full in modules else source)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        if _layer(source) in LOWER
        for target in targets
        if _layer(target) in UPPER
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_below_the_airflow_edge_imports_the_operators_or_the_plugin() -> None:
    assert upward_imports(import_graph()) == []


def test_no_two_modules_import_each_other_even_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_walk_sees_relative_lazy_and_type_checking_imports() -> None:
    """The checks above are only as good as the graph: it must catch each way of importing."""
    graph = import_graph()
    assert len(graph) > 100
    # A module-level absolute import, and one made inside a function (the hook builds clients lazily).
    assert f"{NAME}.client.errors" in graph[f"{NAME}.batch.submitting"]
    assert f"{NAME}.client._pool" in graph[f"{NAME}.hooks.runcomfy"]
    # An import made only for type checking.
    assert f"{NAME}.batch.engine" in graph[f"{NAME}.operators.batch"]
    # ``from package import module`` names the module, not the package.
    assert any(t.startswith(f"{NAME}.batch.") for t in graph[f"{NAME}.batch.submitting"])


def test_an_upward_import_and_a_cycle_are_reported() -> None:
    """The two checks fail on the shapes they exist to catch (a made-up graph: the real one has none)."""
    graph = {
        f"{NAME}.hooks.runcomfy": {f"{NAME}.plugins.connection_test"},
        f"{NAME}.plugins.connection_test": set(),
        f"{NAME}.batch.items": {f"{NAME}.batch.submitting"},
        f"{NAME}.batch.submitting": {f"{NAME}.batch.ledger"},
        f"{NAME}.batch.ledger": {f"{NAME}.batch.items"},
        f"{NAME}.operators.runcomfy": {f"{NAME}.hooks.runcomfy"},
    }
    assert upward_imports(graph) == [f"{NAME}.hooks.runcomfy -> {NAME}.plugins.connection_test"]
    assert cycles(graph) == [[f"{NAME}.batch.items", f"{NAME}.batch.ledger", f"{NAME}.batch.submitting"]]
