"""The examples in sklens's docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib.util
import re

import pytest

import sklens.scanning.result
from tests.helpers import ROOT


@pytest.mark.parametrize("module", [sklens.scanning.result])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


README = ROOT / "README.md"
_BLOCK = re.compile(r"(?:<!-- needs: (?P<needs>[\w.]+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def readme_blocks(text: str) -> list[tuple[str, str | None, int]]:
    """Every ```python block of the README: its code, the package it needs (a comment before
    it), and its line number."""
    return [
        (m["code"], m["needs"], text.count("\n", 0, m.start()) + 1) for m in _BLOCK.finditer(text)
    ]


def test_readme_blocks_are_all_found():
    text = README.read_text(encoding="utf-8")
    assert len(readme_blocks(text)) == text.count("```python") >= 7


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """Each block runs in order in one namespace, as a reader pastes them into a notebook; a
    block that needs an optional package runs wherever that package imports (SAELens does not
    under TransformerLens 4), and says so when it cannot."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    skipped = []
    for code, needs, line in readme_blocks(README.read_text(encoding="utf-8")):
        if (
            needs
            and importlib.util.find_spec(needs) is None
            or (needs == "sae_lens" and not _sae_lens_imports())
        ):
            skipped.append(line)
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the README block at line {line} fails: {err!r}") from err
    assert "run" in namespace and (tmp_path / "main-job" / "summary.json").exists()
    assert len(skipped) <= 1, skipped


def _sae_lens_imports() -> bool:
    try:
        import sae_lens  # noqa: F401
    except Exception:
        return False
    return True
