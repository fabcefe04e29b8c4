"""The notebook demo runs top to bottom (at reduced size) so it cannot rot.

Needs the registry for the embedded model and BigBench data on the first run (CI has it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.slow, pytest.mark.network]

NOTEBOOK = Path(__file__).resolve().parent.parent / "demos" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("SKLENS_DEMO_SIZE", "small")
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
