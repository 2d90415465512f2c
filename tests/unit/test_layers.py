"""The package's layers hold: nothing below the operators imports them or the UI plugin, and no import runs in a circle.

Data flows one way (operator -> hook -> client -> HTTP); an import that runs back up a
layer, or two modules that import each other, is how a decision ends up written twice. The
imports are read from the source (``ast``), every one of them: also those made inside a
function or only for type checking, since each is a dependency a reader has to follow.

Two more decisions keep one home: what a RunComfy status or a wait's outcome means is asked
of ``client/outcome.py``, not compared word by word elsewhere; and a typed model operator's
model is read from what its task renders, not from a table of operator class names.

And ``batch/`` is a core like ``client/``: it runs without Airflow (no ``airflow`` import
outside type checking, no ``AirflowFailException``, nothing of the Airflow edge), so what
it decides comes back as a value the operator maps to Airflow.
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


# -- status words -------------------------------------------------------------------------------

#: RunComfy's state words and the kinds of ``Outcome``: what ``client/outcome.py`` gives meaning to.
STATUS_WORDS = frozenset(
    {"in_queue", "in_progress", "completed", "succeeded", "failed", "cancelled", "timeout", "error"}
)
#: Where those words are compared, on purpose: each compares ANOTHER vocabulary that shares words
#: with RunComfy's, or is a known leftover. Module (under the package) -> the comparisons' source.
DELIBERATE_STATUS_COMPARISONS = {
    # A manifest line's ``status`` (the batch's own report words: succeeded, failed, invalid,
    # unknown, not_submitted, in_flight) or a single task's return value (``status`` is
    # "succeeded" when the task returned).
    "batch/reconcile.py": ['row.get("status") == "succeeded"'],
    "batch/report.py": ['status == "succeeded"'],
    "outputs/contact_sheet.py": ['record.get("status") == "succeeded"'],
    "outputs/manifest.py": ['result.get("status") == "succeeded"', 'record["status"] == "succeeded"'],
    "plugins/html.py": ['item.status != "succeeded"'],
    "plugins/manifests.py": ['status == "succeeded"'],
    "plugins/records.py": ['self.status == "succeeded"'],
    # The batch wait's own event (``batch/window.py``: ready, timeout, error), not a job's outcome;
    # the core reads it (``batch.step.after_wait``), the operator only maps the answer.
    "batch/step.py": ['status != "error"', 'status == "timeout"'],
}


def _words(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {word for element in node.elts for word in _words(element)}
    return set()


def _reads_status(node: ast.AST) -> bool:
    """``x.status``, ``x["status"]``, ``x.get("status")`` or a variable named ``status``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "status"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "status"
    return (isinstance(node, ast.Attribute) and node.attr == "status") or (
        isinstance(node, ast.Name) and node.id == "status"
    )


def status_comparisons(source: str) -> list[str]:
    """The comparisons in ``source`` of a status read from something with one of ``STATUS_WORDS``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_reads_status, operands)) and any(_words(o) & STATUS_WORDS for o in operands):
                found.append(ast.get_source_segment(source, node) or "")
    return found


def test_status_words_are_compared_only_in_client_outcome_and_where_another_vocabulary_is_meant() -> None:
    """The batch engine asks ``outcome.event_kind``; a new ``== "succeeded"`` on an outcome fails here."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        # The emulator is RunComfy's side; ``client/outcome.py`` and ``client/models.py`` are the rule.
        if module.startswith("emulator/") or module in ("client/outcome.py", "client/models.py"):
            continue
        if comparisons := status_comparisons(path.read_text()):
            found[module] = sorted(comparisons)
    assert found == {module: sorted(c) for module, c in DELIBERATE_STATUS_COMPARISONS.items()}


def test_the_status_scan_sees_each_way_of_reading_a_status() -> None:
    code = """
if outcome.get("status") == "succeeded": pass
if record["status"] in ("failed", "cancelled"): pass
if answer.status != "in_queue": pass
if status == "cancelled": pass
if state == "succeeded": pass
if outcome.get("status") == "ready": pass
"""
    assert status_comparisons(code) == [
        'outcome.get("status") == "succeeded"',
        'record["status"] in ("failed", "cancelled")',
        'answer.status != "in_queue"',
        'status == "cancelled"',
    ]


# -- typed model operators ----------------------------------------------------------------------


def test_every_typed_model_operator_renders_its_model_id_and_no_table_names_it() -> None:
    """The outputs view reads a task's model from its rendered ``model_id`` (``plugins/records.py``).

    A typed operator whose ``template_fields`` leave ``model_id`` out would show no model for a
    task that failed before it returned; the legacy table of class names is for tasks of 0.1.0
    only and never grows.
    """
    from airflow_provider_runcomfy.operators.runcomfy import RunComfyModelOperator
    from airflow_provider_runcomfy.plugins.records import _LEGACY_MODEL_OF_OPERATOR

    def subclasses(cls: type) -> list[type]:
        return [sub for direct in cls.__subclasses__() for sub in (direct, *subclasses(direct))]

    typed = [
        cls
        for cls in subclasses(RunComfyModelOperator)
        if cls.__module__.startswith(f"{NAME}.") and cls.input_fields
    ]
    assert {cls.__name__ for cls in typed} >= {"FluxKontextProEditOperator", "NanoBananaEditOperator"}
    assert [cls.__name__ for cls in typed if "model_id" not in cls.template_fields] == []
    assert set(_LEGACY_MODEL_OF_OPERATOR) == {"FluxKontextProEditOperator", "NanoBananaEditOperator"}


# -- the batch core -----------------------------------------------------------------------------

#: Modules a batch module may not import, even lazily or for type checking: the Airflow edge
#: (which maps the core's answers to ``defer``, XCom and task failures) and Airflow's version module.
BATCH_FORBIDDEN = ("operators", "plugins", "triggers", "sensors", "compat")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` (never run, so never an Airflow import at run time)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return guarded


def airflow_bindings(source: str) -> list[str]:
    """The imports in ``source`` that tie it to Airflow when it runs.

    An ``airflow`` import outside ``if TYPE_CHECKING:`` (at module level or inside a function),
    and any import of ``AirflowFailException``, whatever module it comes from: a core that
    fails the task itself cannot be asked what it decided.
    """
    tree = ast.parse(source)
    guarded = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules, names = [node.module or ""], [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules, names = [], [alias.name for alias in node.names]
        else:
            continue
        runtime_airflow = id(node) not in guarded and any(
            m == "airflow" or m.startswith("airflow.") for m in modules
        )
        if runtime_airflow or "AirflowFailException" in names:
            found.append(ast.get_source_segment(source, node) or "")
    return found


def test_the_batch_core_imports_no_airflow_when_it_runs() -> None:
    """``batch/`` decides; the operator maps its answers to Airflow (as ``client/`` is used by the hook).

    So ``batch/`` is tested, and read, without Airflow: no ``airflow`` import outside type checking,
    no ``AirflowFailException``, nothing from the Airflow edge (even lazily or for type checking).
    """
    graph = import_graph()
    found: dict[str, list[str]] = {}
    for path in sorted((PACKAGE / "batch").rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        dotted = f"{NAME}." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        edge = sorted(t for t in graph.get(dotted, set()) if _layer(t) in BATCH_FORBIDDEN)
        if bound := airflow_bindings(path.read_text()) + edge:
            found[module] = bound
    assert found == {}


def test_the_batch_modules_import_each_other_in_no_circle() -> None:
    """``items`` and ``submitting`` once imported each other (one lazily): a circle is a decision split in two."""
    graph = import_graph()
    batch = {
        name: {t for t in targets if _layer(t) == "batch"}
        for name, targets in graph.items()
        if _layer(name) == "batch"
    }
    assert cycles(batch) == []


def test_the_airflow_scan_sees_lazy_imports_and_spares_type_checking_ones() -> None:
    code = """
from typing import TYPE_CHECKING
from airflow_provider_runcomfy.compat import AirflowFailException
if TYPE_CHECKING:
    from airflow.sdk import Context
def f():
    from airflow.sdk import ObjectStoragePath
    import airflow.providers.openlineage
"""
    assert airflow_bindings(code) == [
        "from airflow_provider_runcomfy.compat import AirflowFailException",
        "from airflow.sdk import ObjectStoragePath",
        "import airflow.providers.openlineage",
    ]
