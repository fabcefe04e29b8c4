"""Behaviour does not change under a refactoring: a small run with every stage on (training, scan
with a permutation null and mutual information, confirmation, measures, evidence, causal check,
attribution, steering, explanations, seed stability) reproduces the stored reference's every
table, every summary number and the printed table.

The reference (``tests/reference/tiny_run/``) was written by this same test, before the package
was reorganised into stage folders, with ``SKLENS_WRITE_REFERENCE=1``. Numbers are compared to
1e-4 relative (1e-5 absolute): float32 sums differ in their last bits with the thread count and
between TransformerLens's two backends (measured: at most 3e-7 relative on ``corr``, 1e-7
absolute on a causal delta), far below any digit sklens prints; everything else (units, slots,
modes, counts, strings) must be equal.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from sklens.app.cli import main
from tests.helpers import ROOT

REFERENCE = ROOT / "tests" / "reference" / "tiny_run"
TABLES = (
    "neurons.csv",
    "neurons_mi.csv",
    "neurons_absmax.csv",
    "examples.csv",
    "heldout.csv",
    "explanations.csv",
    "causal.csv",
    "steering.csv",
    "attribution.csv",
    "joined.csv",
    "consensus.csv",
    "stability_jaccard.csv",
    "stability_rank_corr.csv",
)
# what differs between two runs of the same settings: where, when and the settings' own layout
VOLATILE = {
    "config", "versions", "timings_s", "cpu_s", "cpu_s_all_attempts", "attempts",
    "interrupted_cpu_s", "fingerprints",
}  # fmt: skip
FLAGS = [
    "--task", "skillmix", "--steps", "3", "--n-train", "16", "--n-val", "16", "--n-slots", "3",
    "--batch-size", "4", "--top-k", "3", "--n-extremal", "2", "--n-plateau", "4",
    "--eval-every", "2", "--n-confirm", "8", "--permutations", "19", "--seeds", "0,1",
    "--measures", "spearman,auroc,eta_squared", "--mi-bins", "3", "--ablate", "--n-causal", "8",
    "--n-random", "3", "--attribute", "--steering", "0,2",
]  # fmt: skip
RTOL, ATOL = 1e-4, 1e-5


def _close(a, b, where: str) -> None:
    """``a`` equals ``b``: floats to RTOL/ATOL, everything else exactly, recursively."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        # a ratio of two small differences carries their noise ten times over
        rtol = 10 * RTOL if where.endswith("share_of_prompt") else RTOL
        assert math.isclose(a, b, rel_tol=rtol, abs_tol=ATOL) or (
            math.isnan(a) and math.isnan(b)
        ), f"{where}: {a} != {b}"
    elif isinstance(a, str) and isinstance(b, str) and _number(a) and _number(b):
        _close(float(a), float(b), where)  # a CSV column with blanks reads as text
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _printed(text: str) -> str:
    """The printed table and lines, less the timings and the run directory's path."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("Timings:"))


def _summary(path: Path) -> dict:
    summary = json.loads(path.read_text())
    # the bridge names the model by its path, HookedTransformer by the folder's name
    summary["model"]["name"] = Path(summary["model"]["name"]).name
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def test_a_small_run_reproduces_its_reference(qwen_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the printed lines name the run directory: the same relative one
    out = Path("run")
    assert main(["run", "--quiet", "--model", str(qwen_dir), "--out", str(out), *FLAGS]) == 0
    printed = _printed(capsys.readouterr().out)
    if os.environ.get("SKLENS_WRITE_REFERENCE"):
        REFERENCE.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            (REFERENCE / name).write_bytes((out / name).read_bytes())
        summary = _summary(out / "summary.json")
        (REFERENCE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        (REFERENCE / "evidence.json").write_bytes((out / "evidence.json").read_bytes())
        (REFERENCE / "printed.txt").write_text(printed + "\n")
        pytest.skip("reference written")
    assert printed == (REFERENCE / "printed.txt").read_text().rstrip("\n")
    written = json.loads((out / "summary.json").read_text())
    # CPU seconds per phase beside the wall seconds (a pause inflates only the wall time)
    assert written["cpu_s"].keys() == written["timings_s"].keys()
    assert all(v >= 0 for v in written["cpu_s"].values()) and written["cpu_s"]["train"] > 0
    # one attempt: every attempt's seconds are this one's
    assert written["attempts"] == 1 and written["interrupted_cpu_s"] == 0
    assert written["cpu_s_all_attempts"] == written["cpu_s"]
    _close(_summary(out / "summary.json"), json.loads((REFERENCE / "summary.json").read_text()),
           "summary")  # fmt: skip
    _close(
        json.loads((out / "evidence.json").read_text()),
        json.loads((REFERENCE / "evidence.json").read_text()),
        "evidence",
    )
    for name in TABLES:
        got = pd.read_csv(out / name, keep_default_na=False)
        want = pd.read_csv(REFERENCE / name, keep_default_na=False)
        assert list(got.columns) == list(want.columns), name
        _close(got.to_dict(orient="list"), want.to_dict(orient="list"), name)
