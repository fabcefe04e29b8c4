"""``sklens run --bootstrap B --basis-rotations R``: the selection-stability and basis-test stages
write their tables, summary numbers and report section, their numbers equal direct calls of
``sklens.selection_stability`` and ``sklens.basis_test`` on the same inputs, and bad settings are
refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sklens
from sklens.app.cli import main
from sklens.app.config import MIN_BASIS_EXAMPLES
from sklens.app.study import open_run
from sklens.confirm.selection import MIN_EXAMPLES
from sklens.scanning import metrics
from sklens.scanning.metrics import from_spec
from tests.helpers import forbid_work, study_args, without_type_checks


@pytest.fixture(scope="module")
def run_dir(qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("selection") / "run"
    assert main([*study_args(qwen_dir, out), "--bootstrap", "20", "--basis-rotations", "19"]) == 0
    return out


def test_the_stages_write_their_tables_and_summary(run_dir):
    neurons = pd.read_csv(run_dir / "neurons.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    stability = pd.read_csv(run_dir / "selection_stability.csv")
    assert list(stability[["layer", "unit", "slot"]].itertuples(index=False)) == list(
        neurons[["layer", "unit", "slot"]].itertuples(index=False)
    )
    s = summary["selection_stability"]
    assert s["n_boot"] == 20 and s["k"] == 3 and s["reduce"] == "max"
    assert s["mean_stay_share"] == pytest.approx(stability.stay_share.mean())
    assert list(s["stay_share"].values()) == pytest.approx(list(stability.stay_share))
    assert {"assumption", "outside_share", "n_candidates"} <= set(s)
    assert "selection split (n=12)" in s["examples"]

    basis = pd.read_csv(run_dir / "basis.csv")
    assert len(basis) == len(neurons) and (basis.n_examples == 8).all()
    b = summary["basis_test"]
    assert b["n_units"] == 3 and b["n_rotations"] == 19
    assert b["n_p_rotation_0.05"] == int((basis.p_rotation <= 0.05).sum())
    assert b["mean_abs_r_unit"] == pytest.approx(basis.r_unit.abs().mean())
    assert b["mean_rotation_best_q95"] == pytest.approx(basis.rotation_best_q95.mean())
    assert b["mean_probe_r_heldout"] == pytest.approx(basis.probe_r_heldout.mean())
    assert "confirmation split (held out, n=8)" in b["examples"]


def test_the_tables_equal_direct_calls_on_the_same_inputs(run_dir):
    """The bootstrap on the selection split with the scan's metric values, the basis test on the
    confirmation split with the study's metric, both seeded by the study's seed."""
    run = open_run(run_dir)
    scan = sklens.Scan.load(run_dir / "scan.safetensors")
    metric = json.loads((run_dir / "summary.json").read_text())["metric"]
    values = metrics.values(scan.metric_values, name=metric)
    direct = sklens.selection_stability(
        run.model, run.prompt, run.task.val, values, scan,
        k=3, reduce="max", n_boot=20, seed=0, batch_size=4, progress=False,
    )  # fmt: skip
    table = pd.read_csv(run_dir / "selection_stability.csv")
    np.testing.assert_allclose(table.stay_share, direct.table.stay_share)
    np.testing.assert_allclose(table.mean_rank, direct.table.mean_rank)
    basis = sklens.basis_test(
        run.model, run.prompt, run.task.confirm, from_spec(metric), run.neurons,
        n_rotations=19, seed=0, batch_size=4, progress=False,
    )  # fmt: skip
    columns = ["r_unit", "rotation_best_q95", "p_rotation", "probe_r_heldout"]
    np.testing.assert_allclose(
        pd.read_csv(run_dir / "basis.csv")[columns], basis.table[columns], rtol=1e-6, atol=1e-9
    )


def test_the_report_shows_both_checks(run_dir):
    assert main(["report", str(run_dir)]) == 0  # the manifest lists the new files
    html = (run_dir / "report.html").read_text()
    s = json.loads((run_dir / "summary.json").read_text())
    stability = html.split("Selection stability: 20 bootstrap resamples")[1]
    assert f"in {s['selection_stability']['mean_stay_share']:.0%} of the resamples" in stability
    basis = html.split(
        "Basis test on the confirmation split (held out, n=8): each top unit against "
        "19 random bases of its layer"
    )[1]
    assert f"{s['basis_test']['n_p_rotation_0.05']} of 3 top units beat" in basis
    assert f"r = {s['basis_test']['mean_probe_r_heldout']:.3f} on average" in basis


def test_without_the_flags_neither_file_nor_section(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert not (out / "selection_stability.csv").exists() and not (out / "basis.csv").exists()
    assert "selection_stability" not in summary and "basis_test" not in summary
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Selection stability:" not in html and "Basis test on" not in html


@pytest.mark.parametrize(
    ("extra", "messages"),
    [
        (["--bootstrap", "-1"], ["--bootstrap must be at least 0 (bootstrap resamples"]),
        (["--bootstrap", "5"], ["--bootstrap 5 is too few bootstrap resamples (at least 20)",
                                "or pass --bootstrap 0"]),
        (["--basis-rotations", "-1"], ["--basis-rotations must be at least 0"]),
        (["--basis-rotations", "10"], ["--basis-rotations 10 is too few random bases (at least "
                                       "19): p_rotation is at least 1/(R + 1)"]),
        (["--basis-rotations", "19", "--n-confirm", "0"],
         ["--basis-rotations tests the top-K on the confirmation split", "--n-confirm 0",
          "raise --n-confirm, or pass --basis-rotations 0"]),
        (["--basis-rotations", "19", "--n-confirm", "6"],
         ["needs at least 8 there (half fit its probe, half test it)", "--n-confirm 6"]),
        (["--bootstrap", "20", "--permutation-groups", "skill"],
         ["--bootstrap resamples the marginal r, but --permutation-groups scans the "
          "within-group r: drop one of them"]),
    ],
)  # fmt: skip
def test_bad_settings_fail_before_any_work(
    qwen_dir, tmp_path, capsys, monkeypatch, extra, messages
):
    forbid_work(monkeypatch)
    assert main([*study_args(qwen_dir, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    for message in messages:
        assert message in err


def test_python_spells_the_settings_as_python():
    with pytest.raises(ValueError, match=r"bootstrap=5 is too few bootstrap resamples"):
        sklens.ConfirmConfig(bootstrap=5)
    with pytest.raises(ValueError, match=r"basis_rotations tests .* but n_confirm=0"):
        sklens.ConfirmConfig(basis_rotations=19, n_confirm=0)
    with pytest.raises(TypeError, match="bootstrap must be a whole number"), without_type_checks():
        sklens.ConfirmConfig(bootstrap=20.0)


def test_the_configs_minimum_is_the_basis_tests():
    assert MIN_BASIS_EXAMPLES == MIN_EXAMPLES
