"""The notebook demo runs top to bottom (at reduced size), from an empty cache, so it cannot rot.

Needs the registry for the embedded model (CI has it); the arithmetic data is generated.
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.network]

NOTEBOOK = ROOT / "demos" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    pytest.importorskip("sae_lens", reason="its SAE section needs SAELens (TransformerLens 3)")
    monkeypatch.setenv("SKLENS_DEMO_SIZE", "small")
    home = tmp_path / "empty-home"  # as a new user's first run: nothing fetched or converted
    monkeypatch.setenv("SKLENS_HOME", str(home))
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("var CircuitsVis" in h and "&lt;soft0&gt;" in h for h in html)  # the offline view
    assert any("image/png" in o.get("data", {}) for o in outputs)  # figures, no %matplotlib inline
    assert not any("%matplotlib" in cell.source for cell in nb.cells)
    # the SAE section: a view of latents, labelled as latents
    assert any(re.search(r"L\d+ F\d+ @soft\d+", h) for h in html)
    assert os.environ.get("SKLENS_DEMO_SIZE") == "small"
    assert list((home / "artifacts").iterdir())  # it did fetch into the empty cache
