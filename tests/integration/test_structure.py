"""The package's structure, checked: no import cycles between sklens's modules (counting imports
at module level, ``TYPE_CHECKING`` blocks and a module's ``__getattr__`` included; imports inside
other functions are lazy on purpose)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "sklens"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, name: str, modules: set[str]) -> set[str]:
    """The sklens modules a module imports at module level (``if`` blocks included)."""
    found: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.If):
            body += node.body + node.orelse
        elif isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            body += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from sklens.data import source" imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {m: _imports(ast.parse(p.read_text()), m, modules) for m, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "sklens": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    """Two were found at 662bc0f: viz <-> evidence (a deprecation shim's ``__getattr__``) and
    result <-> stats.mutual_info (``compare_with_pearson`` under ``TYPE_CHECKING``)."""
    graph = import_graph()
    assert "sklens.app.study" in graph and graph["sklens.app.study"]  # the graph is read
    # a package imports its submodules; that is not a cycle through the package's code
    for package in [m for m in graph if (PACKAGE.parent / m.replace(".", "/")).is_dir()]:
        graph[package] = set()
    assert cycles(graph) == []


# The method's stages, lowest first: a module may import its own layer and the layers below it.
# The top-level modules (the vocabulary, validation, atomic writes, ...) are the base.
LAYERS = (
    "<base>",
    "stats",
    "models",
    "data",
    "units",
    "views",
    "prompt",
    "scanning",
    "confirm",
    "explanation",
    "causal",
    "app",
)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] not in LAYERS:
        return 0
    return LAYERS.index(parts[1])


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each import from a lower layer into a higher one (the package and the ``python -m``
    entry point excepted: they sit above everything)."""
    return sorted(
        (m, d)
        for m, deps in graph.items()
        if m not in ("sklens", "sklens.__main__")
        for d in deps
        if d != "sklens" and layer(d) > layer(m)
    )


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS[1:])


def test_no_import_runs_up_the_layers():
    graph = import_graph()
    assert upward_imports({"sklens.stats.a": {"sklens.app.b"}}) == [
        ("sklens.stats.a", "sklens.app.b")
    ]  # a planted one is found
    assert upward_imports(graph) == []


def test_contributing_maps_every_module():
    """CONTRIBUTING's layout block names each module of each folder, and nothing else."""
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    block = text.split("## How the code is laid out", 1)[1].split("```", 2)[1]
    listed = set()
    for line in block.strip().splitlines():
        folder, *names = line.split("#", 1)[0].split()
        prefix = "" if folder == "sklens/" else folder
        listed |= {f"{prefix}{name}" for name in names}
    actual = {
        str(p.relative_to(PACKAGE).with_suffix(""))
        for p in PACKAGE.rglob("*.py")
        if p.stem not in ("__init__", "__main__")
    }
    assert listed == actual
