"""Packaging: what the sdist and the wheel carry, their metadata, the typed lazy exports, and
``python -m sklens``. Builds once per module, offline (``--no-isolation``), in a few seconds, from
a copy of the checkout (nothing is written into it)."""

from __future__ import annotations

import ast
import email
import email.message
import fnmatch
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import sklens
from tests.helpers import ROOT, TEST_FOLDERS

NAME_VERSION = f"sklens-{sklens.__version__}"

CLASSIFIERS = [
    "Development Status :: 3 - Alpha",
    "Intended Audience :: Science/Research",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Operating System :: OS Independent",
    "Typing :: Typed",
]
KEYWORDS = {
    "interpretability",
    "skill neurons",
    "transformerlens",
    "soft prompt",
    "mechanistic interpretability",
    "language models",
}
# what may sit at the top of the sdist: no virtual environments, .git or run directories
SDIST_TOP = {
    "PKG-INFO",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "LICENSE",
    "README.md",
    "CONTRIBUTING.md",
    "sklens",
    "sklens.egg-info",
    "tests",
}


def _ignored(root: Path) -> Callable[[str, list[str]], set[str]]:
    """What the copy of the checkout leaves out: .git, build outputs (a stale ``*.egg-info``
    too, even an unpacked sdist's own), virtual environments, and what .gitignore names as a
    folder (run directories)."""
    patterns = [".git", "*.egg-info", "build", "dist"]
    if (root / ".gitignore").exists():
        lines = (root / ".gitignore").read_text().splitlines()
        patterns += [line.strip().rstrip("/") for line in lines if line.strip().endswith("/")]

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {
            n
            for n in names
            if any(fnmatch.fnmatch(n, p) for p in patterns)
            or (Path(folder, n) / "pyvenv.cfg").exists()
        }

    return ignore


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist, then the wheel built from that sdist (as pip builds one from PyPI), so the
    wheel also proves the sdist builds.

    Both are built from a copy of the checkout: setuptools reuses a stale
    ``sklens.egg-info/SOURCES.txt``, which would let the sdist keep files MANIFEST.in no longer
    asks for, and a stale ``build/`` folder would leak into the wheel. The copy gets decoys that
    must not travel: a virtual environment, a .git folder, a run directory, bytecode."""
    src = tmp_path_factory.mktemp("src") / "sklens"
    shutil.copytree(ROOT, src, ignore=_ignored(ROOT))
    for decoy in [".tl4-env/pyvenv.cfg", ".git/HEAD", "sklens-out/run/results.json"]:
        (src / decoy).parent.mkdir(parents=True, exist_ok=True)
        (src / decoy).write_text("decoy")
    (src / "tests" / "__pycache__").mkdir(exist_ok=True)
    (src / "tests" / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"decoy")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def sdist_names(dists: tuple[Path, Path]) -> set[str]:
    with tarfile.open(dists[0]) as tar:
        names = tar.getnames()
    assert all(n == NAME_VERSION or n.startswith(NAME_VERSION + "/") for n in names)
    return {n.removeprefix(NAME_VERSION).lstrip("/") for n in names} - {""}


@pytest.fixture(scope="module")
def metadata(dists: tuple[Path, Path]) -> email.message.Message:
    with zipfile.ZipFile(dists[1]) as whl:
        return email.message_from_bytes(whl.read(f"{NAME_VERSION}.dist-info/METADATA"))


def test_license_travels_in_both(dists: tuple[Path, Path], sdist_names: set[str]) -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the sklens developers" in text
    assert "LICENSE" in sdist_names
    with zipfile.ZipFile(dists[1]) as whl:
        places = {f"{NAME_VERSION}.dist-info/licenses/LICENSE", f"{NAME_VERSION}.dist-info/LICENSE"}
        found = [n for n in whl.namelist() if n in places]
        assert found, whl.namelist()
        assert whl.read(found[0]).decode() == text


def test_metadata(metadata: email.message.Message) -> None:
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Author"] or metadata["Author-email"]
    keywords = {k.strip() for k in (metadata["Keywords"] or "").split(",")}
    assert KEYWORDS <= keywords
    assert set(CLASSIFIERS) <= set(metadata.get_all("Classifier") or [])
    assert "notebook" in (metadata.get_all("Provides-Extra") or [])
    assert not metadata.get_all("Project-URL")  # no public home yet: none invented


def test_transformer_lens_3_by_default(metadata: email.message.Message) -> None:
    (tl,) = [
        r
        for r in map(Requirement, metadata.get_all("Requires-Dist") or [])
        if canonicalize_name(r.name) == "transformer-lens" and r.marker is None
    ]
    assert tl.specifier.contains("3.9") and tl.specifier.contains("3.0")
    assert not tl.specifier.contains("4.0") and not tl.specifier.contains("2.9")


def test_wheel_is_typed(dists: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dists[1]) as whl:
        assert "sklens/py.typed" in whl.namelist()


def _test_modules_imported() -> set[str]:
    """Every ``tests/X.py`` (or ``tests/FOLDER/X.py``) some test file names: as an import or
    ``-m`` module, or a path."""
    folder = rf"(?:(?:{'|'.join(TEST_FOLDERS)})\.)?"
    found: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text()
        found |= {
            m.replace(".", "/") for m in re.findall(rf"\btests\.({folder}[A-Za-z_]\w*)", text)
        }
        found |= set(re.findall(r"""["']tests["']\s*/\s*["']([A-Za-z_]\w*)\.py["']""", text))
    return found


def test_sdist_carries_the_test_helpers(sdist_names: set[str]) -> None:
    imported = _test_modules_imported()
    assert {"helpers", "unit/test_explain"} <= imported  # the regex sees the imports at all
    wanted = {"tests/__init__.py", "tests/conftest.py", "tests/helpers.py"}
    wanted |= {f"tests/{m}.py" for m in imported}
    wanted |= {f"tests/{folder}/__init__.py" for folder in TEST_FOLDERS}
    wanted |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    assert wanted <= sdist_names, sorted(wanted - sdist_names)
    assert not [n for n in sdist_names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]


def test_sdist_carries_nothing_else(sdist_names: set[str]) -> None:
    top = {n.split("/")[0] for n in sdist_names}
    assert top <= SDIST_TOP, sorted(top - SDIST_TOP)
    assert {"README.md", "CONTRIBUTING.md", "pyproject.toml"} <= top


def _type_checking_names() -> dict[str, str]:
    """Public name -> dotted path of what the ``if TYPE_CHECKING:`` block of sklens binds."""
    tree = ast.parse((ROOT / "sklens" / "__init__.py").read_text())
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1
    bound: dict[str, str] = {}
    for node in blocks[0].body:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.asname, "import a.b binds a, not the submodule"
                bound[alias.asname] = alias.name
        elif isinstance(node, ast.Assign):  # NAME = _imported_name
            assert isinstance(node.value, ast.Name) and node.value.id in bound
            for target in node.targets:
                assert isinstance(target, ast.Name)
                bound[target.id] = bound[node.value.id]
        else:
            raise AssertionError(f"unexpected in the TYPE_CHECKING block: {ast.dump(node)}")
    return {name: path for name, path in bound.items() if not name.startswith("_")}


def test_type_checking_block_matches_lazy_exports() -> None:
    names = _type_checking_names()
    assert set(names) == set(sklens._EXPORTS) | set(sklens._SUBMODULES)
    for name, module in sklens._EXPORTS.items():
        assert names[name] == f"{module}.{name}", name
    for name, module in sklens._SUBMODULES.items():
        assert names[name] == module, name


def test_python_m_sklens(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sklens", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: sklens ")


def test_readme_links_are_absolute() -> None:
    """PyPI shows the README with no repository around it: relative links would break there, so
    the README names its docs pages as paths. Its one picture (the report) is a file of the
    repository until the project has a public home to serve it from (pyproject has no URLs)."""
    text = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert pictures and all((ROOT / picture).is_file() for picture in pictures), pictures
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)  # fenced code
    text = re.sub(r"``.+?``|`[^`\n]+`", "", text)  # code spans (link text may be one)
    targets = re.findall(r"\]\(\s*<?([^)\s>]*)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    relative = [t for t in targets if not t.startswith(("http", "#"))]
    assert not relative, relative
