"""``sklens run --attribute``: the attribution of the loss on the causal split, and the table that
joins it with the correlation ranking, checked against the run's own saved scan and attribution."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import sklens
from sklens.app.cli import main
from sklens.causal.attribution import Attribution
from tests.helpers import study_args


def test_run_with_attribute_writes_the_joined_table(qwen_dir, tmp_path):
    out = tmp_path / "run"
    args = [*study_args(qwen_dir, out), "--attribute", "--n-causal", "8", "--permutations", "19"]
    assert main(args) == 0
    found = Attribution.load(out / "attribution.safetensors")
    scan = sklens.Scan.load(out / "scan.safetensors")
    top = pd.read_csv(out / "attribution.csv")
    assert len(top) == 3 and found.settings.n_examples == 8 and found.settings.metric == "loss"
    joined = pd.read_csv(out / "joined.csv")
    neurons = pd.read_csv(out / "neurons.csv")

    def units(table):
        return set(zip(table.layer, table.unit, strict=True))

    assert units(joined) == units(neurons) | units(top)  # the union of both top-Ks
    for row in joined.itertuples():  # each number is the saved one at that unit and slot
        assert row.corr == pytest.approx(float(scan.corr[row.layer, row.unit, row.slot]))
        assert row.effect == pytest.approx(float(found.effect[row.layer, row.unit, row.slot]))
    assert joined.in_corr_top.sum() == 3 and joined.in_effect_top.sum() == 3
    score, _ = scan.scores("max")  # rank 1 is the neuron of the largest |score|
    best = joined[joined.corr_rank == 1].iloc[0]
    assert abs(score[best.layer, best.unit]) == score.abs().max()
    causal = (joined.effect_lo > 0) | (joined.effect_hi < 0)
    assert (joined.candidate == (causal & (joined.p_fwer <= 0.05))).all()
    summary = json.loads((out / "summary.json").read_text())["attribution"]
    assert summary["n_in_both_top"] == int((joined.in_corr_top & joined.in_effect_top).sum())
    assert summary["n_candidates"] == int(joined.candidate.sum())
    assert main(["report", str(out)]) == 0  # the manifest lists the new files
    html = (out / "report.html").read_text()
    panel = html.split("Attribution: which units move the loss")[1]
    assert f"{summary['n_in_both_top']} of the top 3 by |score| are also in the top 3" in panel
    assert f"{summary['n_candidates']} units are candidates" in panel
    assert panel.count("data:image/png;base64") >= 1  # the scatter of |score| against |effect|


def test_attribute_with_another_site_is_refused_at_once(qwen_dir, tmp_path, capsys):
    assert main([*study_args(qwen_dir, tmp_path / "o"), "--attribute", "--site", "heads"]) == 2
    assert "--attribute attributes to MLP neurons only" in capsys.readouterr().err
