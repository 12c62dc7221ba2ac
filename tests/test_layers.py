"""The tree is the layer picture (docs/architecture.md), and stays so: read from the source.

- foundation (``errors``, ``settings``, ``processes``, ``faults``, ``interrupts``, ``kernels``)
  imports no other part of nbdurable but the foundation;
- ``store/`` imports only the foundation and itself; it alone runs SQL and imports DuckDB;
- ``engine/`` imports only the foundation, the store and itself;
- adapters (``ipython/``, ``batch/``, ``http/``, ``cli``, ``demo``) do not import each other's modules
  (the CLI calls the public API, ``nbdurable.X``); only ``ipython/`` imports IPython, ipykernel
  or ipywidgets;
- no import cycle (imports inside functions included; those only for type checkers are not run);
- process-wide state (module-level mutable objects, names rebound with ``global``) is the
  documented list below (docs/architecture.md, "Process-wide state"): adding some is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbdurable"
FOUNDATION = {"errors", "settings", "processes", "faults", "interrupts", "kernels"}
ALLOWED = {  # layer -> the layers it may import
    "foundation": {"foundation"},
    "store": {"foundation", "store"},
    "engine": {"foundation", "store", "engine"},
    "ipython": {"foundation", "store", "engine", "ipython", "package"},
    "batch": {"foundation", "store", "engine", "batch", "package"},
    "cli": {"foundation", "store", "engine", "package", "demo", "cli"},  # `nbdurable demo`
    "demo": {"foundation", "store", "engine", "package"},
    "http": {"foundation", "engine", "http"},
    "package": {"foundation", "engine", "ipython", "batch", "http", "package"},  # the public API
}
KERNEL_SIDE = ("IPython", "ipykernel", "ipywidgets", "comm")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in ("store", "engine", "ipython", "batch", "http"):
        return parts[1]
    if parts[1] in FOUNDATION:
        return "foundation"
    return "cli" if parts[1] == "__main__" else parts[1]  # cli (python -m nbdurable), demo


def imports(path: Path, *, typing_only: bool = True) -> set[str]:
    """Every module ``path`` imports, at any depth (names as written, made absolute);
    ``typing_only=False`` leaves out those under ``if TYPE_CHECKING:`` (never run)."""
    tree = ast.parse(path.read_text())
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use nbdurable.<layer>.<module>)"
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def internal(names: set[str], known: dict[str, Path]) -> set[str]:
    """The modules of nbdurable among ``names``; ``from nbdurable import settings`` counts as
    importing ``nbdurable.settings``, not the package."""
    found = {n for n in names if n in known}
    return {n for n in found if not any(m.startswith(n + ".") for m in found)}


def test_each_layer_imports_only_the_layers_below_it():
    known = modules()
    wrong = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
             for module, path in known.items()
             for target in internal(imports(path), known)
             if layer(target) not in ALLOWED[layer(module)]]
    assert wrong == []


def test_only_the_ipython_adapter_imports_the_kernel_side():
    known = modules()
    wrong = [f"{module} imports {name}" for module, path in known.items()
             if layer(module) not in ("ipython", "package")
             for name in imports(path) if name.split(".")[0] in KERNEL_SIDE]
    assert wrong == []


def _sql_calls(path: Path) -> list[int]:
    """Lines where a query is run or DuckDB is imported."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("execute", "executemany", "sql", "query") and node.args \
                and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] == "duckdb" for n in names):
                lines.append(node.lineno)
    return lines


def test_sql_and_duckdb_live_in_the_store_only():
    known = modules()
    wrong = {module: lines for module, path in known.items()
             if layer(module) != "store" and (lines := _sql_calls(path))}
    assert wrong == {}
    assert _sql_calls(known["nbdurable.store.queries"])  # the check sees SQL where there is


def test_no_import_cycle():
    known = modules()
    graph = {m: internal(imports(p, typing_only=False), known) - {m} for m, p in known.items()}
    # a package's __init__ is imported with its modules: not an edge back
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in sorted(graph[m]):
            if seen.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(t):] + [m, t]))
            if t not in seen:
                visit(t, path + [m])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [])


#: Module-level names bound to mutable objects or rebound with ``global`` (constants included:
#: a dict or a Struct is mutable to this check). Process-wide *state* among them is documented in
#: docs/architecture.md; update both when adding one.
PROCESS_WIDE = {
    "nbdurable": {"_LAZY"},
    "nbdurable.batch.children": {"_DRIVERS"},
    "nbdurable.batch.papermill_engine": {"_ENGINE"},
    "nbdurable.engine.cells": {"_PREVIOUS"},
    "nbdurable.engine.context": {"_current", "_process_current"},
    "nbdurable.engine.children": {"_outside_keys"},
    "nbdurable.engine.executors": {"_LOCAL_POOL", "_THREADS"},
    "nbdurable.engine.history": {"CHILDREN_COLUMNS", "RUNS_COLUMNS"},
    "nbdurable.engine.progress": {"_progress_ui"},
    "nbdurable.engine.serializer": {"MOVED_MODULES", "_HEADER", "_LEN", "_MAIN_REF", "_class_ids",
                                    "_load_namespace"},
    "nbdurable.engine.steps": {"F"},
    "nbdurable.engine.waits": {"_floors", "_ui"},
    "nbdurable.engine.worker": {"_parent", "_scope"},
    "nbdurable.ipython": {"__all__"},
    "nbdurable.ipython.extension": {"_runtimes"},
    "nbdurable.ipython.panel": {"_watched", "_watched_lock", "registry"},
    "nbdurable.ipython.pump": {"__all__", "_dispatch_state"},
    "nbdurable.processes": {"_me"},
    "nbdurable.settings": {"_configured", "_log_paths"},
    "nbdurable.store.claims": {"_guarded"},
    "nbdurable.store.journal": {"_warned"},
    "nbdurable.store.records": {"_clock", "_clock_lock"},
    "nbdurable.store.logdb": {"_BY_ARGUMENT", "_FORK_LOCK", "_LEAKED", "_LIVE", "_REGISTRY",
                              "_REGISTRY_LOCK", "__all__"},
    "nbdurable.store.signing": {"_cache", "_cache_lock"},
    "nbdurable.store.spool": {"_last_stamp"},
}
_MUTABLE_CALLS = {"dict", "list", "set", "local", "count", "WeakKeyDictionary", "WeakSet", "defaultdict",
                  "OrderedDict"}


def _process_wide(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {name for node in ast.walk(tree) if isinstance(node, ast.Global)
             for name in node.names}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Call):
            func = value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            mutable = called in _MUTABLE_CALLS or called.lstrip("_")[:1].isupper()
        else:
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set))
        found |= {t.id for t in targets if mutable and isinstance(t, ast.Name)}
    return found


def test_process_wide_state_is_the_documented_list():
    found = {module: names for module, path in modules().items()
             if (names := _process_wide(path))}
    assert found == PROCESS_WIDE
