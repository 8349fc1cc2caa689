"""The package's layers import only downwards, and no two modules import each other.

Read from the source with ``ast`` (every ``import`` statement, also those inside functions,
where a cycle would otherwise hide). The order, lowest first, is ARCHITECTURE.md's:
blocks <- optimizers <- storage <- kernels <- training <- the ``adamx`` facade <- demo.
A module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adamx"

LAYERS = ("blocks", "optimizers", "storage", "kernels", "training", "adamx", "demo", "__main__")


def module_name(path: Path, root: Path) -> str:
    parts = ["adamx", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """``adamx.storage._cast`` -> ``storage``; the package itself is the facade ``adamx``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "adamx"


def imported_modules(source: str, module: str, modules: set[str]) -> set[str]:
    """The adamx modules ``source`` imports (a name imported from a package counts as the
    package, unless it is a module of its own)."""
    found = set()
    package = module if module in _packages(modules) else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "adamx")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "adamx":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found - {module}


def _packages(modules: set[str]) -> set[str]:
    return {m.rsplit(".", 1)[0] for m in modules if "." in m}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    return {m: imported_modules(p.read_text(), m, modules) for m, p in files.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(
        f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
        for m, deps in graph.items()
        for d in deps
        if rank[layer_of(d)] > rank[layer_of(m)]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle once, as found by a depth-first search (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_is_in_a_layer():
    graph = import_graph(PACKAGE)
    assert {layer_of(m) for m in graph} == set(LAYERS), sorted(graph)


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


@pytest.mark.parametrize(
    ("where", "line", "finds"),
    [
        ("optimizers/_adam.py", "from adamx.kernels import _fused", "upward"),
        ("blocks/_moments.py", "import adamx", "upward"),
        ("blocks/_base.py", "from adamx.blocks._moments import MomentsState", "cycle"),
        ("storage/_cast.py", "from . import _with_storage", "cycle"),
    ],
)
def test_the_checks_find_an_injected_upward_import_or_cycle(tmp_path, where, line, finds):
    """The checks can fail: the same tree with one import added (inside a function, where a
    lazy import would hide) is caught."""
    root = tmp_path / "adamx"
    for path in PACKAGE.rglob("*.py"):
        target = root / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (root / where).write_text((root / where).read_text() + f"\n\ndef _late():\n    {line}\n")
    graph = import_graph(root)
    if finds == "upward":
        assert upward_imports(graph) != []
    else:
        assert upward_imports(graph) == [] and cycles(graph) != []


MAX_MODULE_LINES = 500  # the "about 450": a module past this splits along its seams


def test_no_module_is_longer_than_a_few_screens():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules along their seams (over {MAX_MODULE_LINES} lines)"
