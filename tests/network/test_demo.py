"""The first tutorial runs top to bottom on the embedded model from an empty cache, as a new
user's first notebook would (the docs build runs it on the tiny model, offline).

Needs the registry for the embedded model (CI has it); the tutorial's data is written by itself.
"""

from __future__ import annotations

import jupytext
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.network]

TUTORIAL = ROOT / "docs" / "tutorials" / "first_study.py"


def test_first_tutorial_executes_on_the_embedded_model(tmp_path, monkeypatch):
    home = tmp_path / "empty-home"  # nothing fetched or converted
    monkeypatch.setenv("SKLENS_HOME", str(home))
    monkeypatch.setenv("SKLENS_TUTORIAL_MODEL", "smollm2-135m-instruct")
    monkeypatch.setenv("SKLENS_TUTORIAL_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)
    nb = jupytext.read(TUTORIAL)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("var CircuitsVis" in h and "&lt;soft0&gt;" in h for h in html)  # the offline view
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures inline
    assert list((home / "artifacts").iterdir())  # it fetched into the empty cache
    assert (tmp_path / "out" / "run" / "summary.json").exists()  # the study at the end ran
