"""The benchmark scripts run end to end at reduced size on a tiny model (smoke test only;
their numbers come from full runs, never from tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow]

# a prompt trained 1 step on 4 questions, and 2 units of each stratum patched exactly
ATTRIBUTION_SAMPLE = (
    "--n-train 4 --train-steps 1 --n-top 2 --n-random 2 --per-layer 1 --n-low 2".split()
)


@pytest.mark.parametrize(
    "script, extra",
    [
        ("train_step.py", ["--batch-size", "2"]),
        ("scan.py", ["--n", "6", "--nulls", "7", "--batch-size", "3"]),
        ("memory.py", ["--sizes", "4,8", "--naive-max", "4", "--batch-size", "2"]),
        ("memory.py", ["--sizes", "4", "--methods", "attribution,attribution-pairs"]),
        ("attribution.py", ["--n", "6", "--estimators", "atp,ig:1x1", *ATTRIBUTION_SAMPLE]),
        (
            "attribution.py",
            [
                "--task",
                "hans",
                "--metric",
                "margin",
                "--n",
                "4",
                "--estimators",
                "atp",
                *ATTRIBUTION_SAMPLE,
            ],
        ),
        ("choices.py", ["--n", "4", "--batch-size", "2"]),
        ("mutual_info.py", ["--n", "8", "--permutations", "5", "--mi-bins", "2"]),
    ],
)
def test_benchmark_runs(qwen_dir, tmp_path, script, extra):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / script),
        "--model",
        str(qwen_dir),
        "--device",
        "cpu",
        "--repeats",
        "1",
        "--n-slots",
        "3",
        "--results",
        str(tmp_path),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (written,) = tmp_path.glob(f"{script.removesuffix('.py')}*.md")  # attribution-<date>.md
    table = written.read_text()
    assert table.startswith(("### ", "## ")) and "|---|" in table


def test_profile_script_runs(qwen_dir):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "profile_train_step.py")]
    cmd += ["--model", str(qwen_dir), "--device", "cpu", "--n-slots", "3", "--batch-size", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sklens  forward" in proc.stdout and "Self CPU" in proc.stdout


def test_calibration_script_runs(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "calibration.py")]
    cmd += ["--trials", "2", "--permutations", "19", "--results", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "calibration.md").read_text()
    assert "power, within-group scan" in table and "P(any rejection at 0.05), fdr_by" in table
