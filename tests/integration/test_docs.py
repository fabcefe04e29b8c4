"""The documentation runs: the examples in sklens's docstrings (doctest), every ```python block
of the README and of the docs pages (each page's blocks in order, in one namespace, as a reader
pastes them into a notebook), every ``sklens`` command they show (parsed by the command's own
parser, so a renamed or removed flag fails here), and the docs site, built strict with its
tutorials executed."""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import sklens
import sklens.scanning.result
from sklens.app.cli import _parser
from sklens.app.report import build_report
from tests.helpers import ROOT


@pytest.mark.parametrize("module", [sklens.scanning.result])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# the pages a reader runs code from; docs/reproduction.md is generated from run directories
PAGES = [ROOT / "README.md"] + sorted(
    p
    for p in (ROOT / "docs").rglob("*.md")
    if not p.relative_to(ROOT / "docs").parts[0].startswith("reproduction")
)
_BLOCK = re.compile(
    r"(?:<!-- needs: (?P<needs>[\w.]+) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S
)


def page_blocks(text: str, lang: str = "python") -> list[tuple[str, str | None, int]]:
    """Every ```lang block of a page: its code, the package it needs (a comment before it), and
    its line number."""
    return [
        (m["code"], m["needs"], text.count("\n", 0, m.start()) + 1)
        for m in _BLOCK.finditer(text)
        if m["lang"] == lang
    ]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_block_finder_finds_every_block():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found = len(page_blocks(text)) + len(page_blocks(text, "bash"))
        assert found == text.count("```python") + text.count("```bash"), _name(page)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if page_blocks(p.read_text())], ids=_name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace, in an empty directory; a block that needs
    an optional package runs wherever that package imports (SAELens does not under
    TransformerLens 4), and says so when it cannot."""
    blocks = page_blocks(page.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs"}
    for code, needs, line in blocks:
        if needs and not _imports(needs):
            pytest.skip(f"{_name(page)}:{line} needs {needs}, which does not import here")
        try:
            exec(compile(code, f"{_name(page)}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"the block at {_name(page)}:{line} fails: {err!r}") from err


def sklens_commands(text: str) -> list[tuple[list[str], int]]:
    """Every ``sklens ...`` command in the page's bash blocks (after ``&&`` too, continuation
    lines joined, comments dropped), with the block's line."""
    commands = []
    for code, _, line in page_blocks(text, "bash"):
        for statement in code.replace("\\\n", " ").splitlines():
            for part in statement.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["sklens"]:
                    commands.append((words[1:], line))
    return commands


def test_the_command_finder_reads_chains_and_continuations():
    text = "```bash\npip install x && sklens run --top-k 3  # c\nsklens report \\\n  out\n```\n"
    assert sklens_commands(text) == [(["run", "--top-k", "3"], 1), (["report", "out"], 1)]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_sklens_commands_parse(page):
    """Every command a page shows is one the parser accepts, flags and values."""
    for argv, line in sklens_commands(page.read_text(encoding="utf-8")):
        try:
            _parser().parse_args(argv)
        except SystemExit as err:  # 0: --help or --version, which exit once they have printed
            if err.code:
                raise AssertionError(f"{_name(page)}:{line}: `sklens {shlex.join(argv)}`") from err


def _imports(package: str) -> bool:
    if importlib.util.find_spec(package) is None:
        return False
    try:
        importlib.import_module(package)
    except Exception:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _imports("sae_lens") or importlib.util.find_spec("mkdocs") is None,
    reason="the docs are built under the default install (TransformerLens 3 with SAELens, whose "
    "tutorial they execute); SAELens pins TransformerLens 3 and does not import here",
)
def test_docs_site_builds_strict_with_every_public_name(tmp_path):
    """`mkdocs build --strict` (a warning fails it; the tutorials execute, and an error in a cell
    fails it), offline; the API reference has an entry for every name in ``sklens.__all__``."""
    env = {
        **os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1",
        "SKLENS_HOME": str(tmp_path / "empty-home"),  # the tutorials build what they need
        "SKLENS_TUTORIAL_DIR": str(tmp_path / "tutorials"),  # where they write
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    reference = "".join(
        (tmp_path / "site" / "reference" / page / "index.html").read_text(encoding="utf-8")
        for page in ("api", "modules")
    )
    missing = [name for name in sklens.__all__ if _anchor(name) not in reference]
    assert not missing, f"names in sklens.__all__ without an API entry: {missing}"
    for tutorial in ("first_study", "causal_follow_up", "sae_latents"):
        page = (tmp_path / "site" / "tutorials" / tutorial / "index.html").read_text()
        assert "jp-OutputArea" in page, f"the {tutorial} tutorial shows no executed output"


def _anchor(name: str) -> str:
    """The id mkdocstrings gives a name's entry: its path where it is defined."""
    if name in sklens._SUBMODULES:
        return f'id="{sklens._SUBMODULES[name]}'
    if name == "__version__":
        return 'id="sklens.version.__version__"'
    return f'id="{sklens._EXPORTS[name]}.{name}"'


RUN_DIRECTORY = ROOT / "docs" / "reference" / "run-directory.md"
_MEASURES = ("accuracy_per_token", "metric", "loss", "accuracy")


def _sections(text: str) -> list[tuple[str, str]]:
    """The page's ``###`` sections: heading, body."""
    parts = re.split(r"^### (.*)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2], strict=True))


def _documentation_of(name: str, sections: list[tuple[str, str]]) -> str:
    """The text that documents one written file: every section whose heading names it (with
    ``<edit>``-style placeholders), and that of a file whose columns it borrows ("the columns
    of `causal.csv`")."""
    found = []
    for heading, body in sections:
        for spelled in re.findall(r"`([^`]+)`", heading):
            parts = re.split(r"(<\w+>)", spelled.rstrip("/"))
            pattern = "".join(r"\w+" if p.startswith("<") else re.escape(p) for p in parts)
            if re.fullmatch(pattern, name):
                found.append(body)
    for borrowed in re.findall(r"columns (?:of|as) `([^`]+)`", "\n".join(found)):
        found.append(_documentation_of(borrowed, sections))
    return "\n".join(found)


def _column_documented(column: str, text: str) -> bool:
    spellings = {column} | {column.replace(m, "<measure>") for m in _MEASURES if m in column}
    if column.startswith("meta."):
        spellings.add("meta.<field>")
    return any(f"`{s}`" in text for s in spellings)


@pytest.mark.slow
def test_run_directory_page_lists_every_file_and_column(tmp_path):
    """A study with every stage on the tiny model: each file it writes has a section of
    docs/reference/run-directory.md, and each column of each table is named there."""
    config = sklens.StudyConfig(
        task="arithmetic", model=str(sklens.tiny_checkpoint("qwen2")), n_train=32, n_val=32,
        train=sklens.TrainConfig(n_slots=3, steps=2, eval_every=1, n_plateau=8),
        scan=sklens.ScanConfig(metric="loss", permutations=19, mi_bins=4),
        select=sklens.SelectConfig(top_k=3),
        confirm=sklens.ConfirmConfig(
            n_confirm=16, seeds=(0, 1), contrast=("untrained",), bootstrap=20,
            basis_rotations=19, behaviour_by="last_digit_decides",
            behaviour_where="operation=multiplication",
        ),
        causal=sklens.CausalConfig(
            ablate=True, ablate_modes=("mean",), n_random=3, n_causal=16, attribute=True,
            dose_response=(1, 2), dose_random=2, steering=(0.0, 2.0), steering_random=2,
            counterfactual=("last_digit_decides",), score_choices=False,
        ),
    )  # fmt: skip
    out = tmp_path / "run"
    sklens.run_study(config, out, progress=False)
    dose = pd.read_csv(out / "dose_response.csv").query("group == 'all'")
    randoms = dose[dose.set.str.startswith("random_")].groupby(["ranking", "k"]).size()
    assert set(randoms) == {2} and len(randoms) == 2 * 2  # dose_random, not n_random, per k
    build_report(out)
    sections = _sections(RUN_DIRECTORY.read_text(encoding="utf-8"))
    written = sorted(p.name for p in out.iterdir())
    assert len(written) >= 25
    for name in written:
        text = _documentation_of(name, sections)
        assert text, f"{name} is written by a run but has no section in {RUN_DIRECTORY.name}"
        if name.endswith(".csv"):
            columns = (out / name).read_text(encoding="utf-8").splitlines()[0]
            missing = [
                c for c in columns.replace('"', "").split(",") if not _column_documented(c, text)
            ]
            assert not missing, f"{name}: columns not in {RUN_DIRECTORY.name}: {missing}"


def test_the_run_directory_checker_finds_an_undocumented_column():
    sections = _sections("### `a.csv`\nColumns `x`, `d_<measure>`.\n### `b_<edit>.csv`\n`y`\n")
    assert _column_documented("d_loss_lo", "`d_<measure>_lo`")
    assert _column_documented("x", _documentation_of("a.csv", sections))
    assert not _column_documented("z", _documentation_of("a.csv", sections))
    assert _column_documented("y", _documentation_of("b_last_digit.csv", sections))
    assert not _documentation_of("c.csv", sections)
