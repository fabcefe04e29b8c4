"""Steering curves: the identity factor changes nothing, factor 0 is zero-ablation, the random
sets are the same at every factor; the run's --steering writes the table and the report's figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import sklens
from sklens.app.cli import main
from sklens.views import figures
from tests.helpers import study_args


def test_steering_curve_agrees_with_the_causal_check(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    top = sklens.scan(qwen, prompt, examples[:24], sklens.metrics.loss(), progress=False).top_k(3)
    held = examples[24:40]
    curve = sklens.steering_curve(
        qwen, prompt, held, top, factors=(0, 1, 3), n_random=3, n_boot=50, progress=False
    )
    assert set(curve.factor) == {0.0, 1.0, 3.0} and set(curve["mode"]) == {"scale"}
    identity = curve[curve.factor == 1]
    assert np.allclose(identity[["d_loss", "d_metric"]].to_numpy(), 0, atol=1e-6)
    zero = sklens.causal_check(
        qwen, prompt, held, top, modes=("zero",), n_random=3, n_boot=50, progress=False
    )
    at_zero = curve[curve.factor == 0].reset_index(drop=True)
    assert np.allclose(at_zero.d_loss, zero.d_loss, atol=1e-6)
    assert list(at_zero.set) == list(zero.set)  # the same random sets, drawn once
    scaled = curve[(curve.factor == 3) & (curve.set == "selected")].d_loss.iloc[0]
    intervention = sklens.NeuronIntervention(qwen, top, "scale", factor=3.0, positions="slots")
    base = sklens.evaluate(qwen, prompt, held).loss
    edited = sklens.evaluate(qwen, prompt, held, intervention=intervention).loss
    assert scaled == pytest.approx(float((edited - base).mean()), abs=1e-6)
    fig = figures.steering(curve, "loss")
    assert isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["random sets (median)", "selected (95% CI)"]
    shifted = sklens.steering_curve(
        qwen, prompt, held, top, factors=(0,), mode="shift", n_random=2, n_boot=20, progress=False
    )
    assert np.allclose(shifted.d_loss, 0, atol=1e-6)  # a shift of 0 is the unedited model
    with pytest.raises(ValueError, match="mode must be 'scale' or 'shift'"):
        sklens.steering_curve(qwen, prompt, held, top, mode="zero", progress=False)
    with pytest.raises(ValueError, match="finite numbers"):
        sklens.steering_curve(qwen, prompt, held, top, factors=(1, float("nan")), progress=False)
    with pytest.raises(ValueError, match="needs random sets"):
        sklens.steering_curve(qwen, prompt, held, top, n_random=0, progress=False)
    with pytest.raises(ValueError, match="no 'd_nothing'"):
        figures.steering(curve, "nothing")


def test_run_with_steering_writes_the_curve_and_the_report_draws_it(qwen_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = study_args(
        qwen_dir, out, "--steering", "0,2", "--steering-random", "2", "--n-causal", "8"
    )
    assert main([*args, "--report"]) == 0
    curve = pd.read_csv(out / "steering.csv")
    assert set(curve.factor) == {0.0, 2.0} and set(curve.set) == {
        "selected",
        "random_0",
        "random_1",
    }
    assert "Steering curve on the causal split (8 examples)" in (out / "report.html").read_text()
    capsys.readouterr()
    assert main(study_args(qwen_dir, tmp_path / "bad", "--steering", "0,x")) == 2
    err = capsys.readouterr().err
    assert "--steering must be numbers separated by commas" in err and "--steering 0,0.5,2,4" in err
