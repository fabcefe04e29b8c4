"""Which TransformerLens each install gets (the README's "Install" table), resolved by pip itself
against the package index: a user must get the configuration the README measured."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest
from packaging.version import Version

from tests.helpers import HOOKED, ROOT


def _resolved(spec: str, tmp_path) -> dict[str, str]:
    """What ``pip install SPEC`` would install into an empty environment: name -> version."""
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
         "--report", str(report), spec],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("extras", ["", "[sae,notebook]"])
def test_every_install_resolves_transformer_lens_3(extras, tmp_path):
    resolved = _resolved(f".{extras}", tmp_path)
    assert Version(resolved["transformer-lens"]).major == 3
    if "sae" in extras:
        assert "sae-lens" in resolved
    if "notebook" in extras:
        assert Version(resolved["ipywidgets"]).major >= 8


def test_this_environment_runs_the_transformer_lens_it_says():
    """The suite's first pass runs on what ``.[dev]`` installs (TransformerLens 3); the second
    (``.tl4-env``, scripts/test.sh) on TransformerLens 4, without HookedTransformer."""
    major = Version(version("transformer-lens")).major
    assert major in (3, 4) and HOOKED == (major == 3)
