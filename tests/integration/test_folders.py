"""Every test file sits in the folder its markers say (the folders add to the markers, which still
select: ``pytest -m "not slow"``).

``tests/network/``: every test is marked ``network``. ``tests/slow/``: every test is marked
``slow`` (and not every one ``network``). ``tests/unit/`` and ``tests/integration/``: at least one
test carries none of the tier markers, so the quick loop runs it. The markers are read from the
source, as this suite writes them: a module's or class's ``pytestmark`` and ``@pytest.mark``
decorators; a tier marker written any other way fails here, so none is missed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT, TEST_FOLDERS

TIERS = frozenset({"slow", "network", "browser", "multiprocess"})
TESTS = ROOT / "tests"


def _tier(node: ast.AST) -> str | None:
    """``"slow"`` for ``pytest.mark.slow`` (or a call of it), None for anything else."""
    if isinstance(node, ast.Call):
        node = node.func
    if (
        isinstance(node, ast.Attribute)
        and node.attr in TIERS
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "pytest"
    ):
        return node.attr
    return None


def _pytestmark(body: list[ast.stmt]) -> list[ast.AST]:
    """The markers a module's or class's ``pytestmark = ...`` lists."""
    found: list[ast.AST] = []
    for stmt in body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets
        ):
            value = stmt.value
            found += value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
    return found


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _markers(path: Path) -> list[set[str]]:
    """The tier markers of each test in the file at ``path``; an AssertionError names a tier
    marker written where this reader does not look."""
    tree = ast.parse(path.read_text())
    seen: list[ast.AST] = []

    def tiers(nodes: list[ast.AST]) -> set[str]:
        seen.extend(nodes)
        return {t for t in map(_tier, nodes) if t}

    module = tiers(_pytestmark(tree.body))
    found = []
    for node in tree.body:
        scope, functions = module, [node]
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            scope = module | tiers(node.decorator_list + _pytestmark(node.body))
            functions = node.body
        for f in functions:
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name.startswith("test"):
                found.append(scope | tiers(f.decorator_list))
    elsewhere = [n for n in ast.walk(tree) if _tier(n) and n not in seen]
    elsewhere = [n for n in elsewhere if not any(n is getattr(s, "func", None) for s in seen)]
    assert not elsewhere, (
        f"{_name(path)}:{elsewhere[0].lineno}: put a tier marker on the test "
        "(@pytest.mark...) or in the module's pytestmark, where tests/integration/test_folders.py "
        "reads it"
    )
    return found


def _folders(marks: list[set[str]]) -> set[str]:
    """The folders a file whose tests carry ``marks`` (one set per test) may sit in."""
    if all("network" in m for m in marks):
        return {"network"}
    if all("slow" in m for m in marks):
        return {"slow"}
    if any(not m for m in marks):
        return {"unit", "integration"}
    return set()  # every test marked, but not all slow: the quick loop would skip the whole file


def test_every_test_file_sits_in_the_folder_its_markers_say():
    misplaced = []
    for path in sorted(TESTS.rglob("test_*.py")):
        marks = _markers(path)
        folders = _folders(marks) if marks else set()
        if path.parent.parent != TESTS or path.parent.name not in folders:
            where = " or ".join(f"tests/{f}/" for f in sorted(folders)) or (
                "no folder: mark every test slow, or leave one unmarked"
            )
            misplaced.append(f"{_name(path)} (markers {marks}) belongs in {where}")
    assert not misplaced, "\n".join(misplaced)
    assert all((TESTS / folder / "__init__.py").exists() for folder in TEST_FOLDERS)


def test_the_marker_reader_sees_every_form(tmp_path):
    planted = tmp_path / "test_planted.py"
    planted.write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.network\n"
        "@pytest.mark.slow\n"
        "def test_a(): ...\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "def test_b(x): ...\n"
        "@pytest.mark.browser()\n"
        "class TestC:\n"
        "    pytestmark = [pytest.mark.multiprocess]\n"
        "    def test_c(self): ...\n"
        "def helper(): ...\n"
    )
    assert _markers(planted) == [
        {"network", "slow"},
        {"network"},
        {"network", "browser", "multiprocess"},
    ]
    planted.write_text("import pytest\nslow = pytest.mark.slow\n@slow\ndef test_a(): ...\n")
    with pytest.raises(AssertionError, match="put a tier marker on the test"):
        _markers(planted)
    assert _folders([{"network", "slow"}, {"network"}]) == {"network"}
    assert _folders([{"slow", "multiprocess"}, {"slow"}]) == {"slow"}
    assert _folders([{"slow"}, set()]) == {"unit", "integration"}
    assert _folders([{"slow"}, {"multiprocess"}]) == set()
