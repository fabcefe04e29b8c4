"""Figures, offline circuitsvis views, the report, and the report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import sklens
from sklens.app.cli import main
from sklens.app.report import build_report
from sklens.app.rundir import RunDirError
from sklens.scanning import metrics
from sklens.views import figures, viz
from tests.helpers import ROOT, study_args

ARTIFACTS = ROOT / "test-artifacts"


def test_figures_return_figures_and_save_png_and_svg(qwen, examples, tmp_path):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = sklens.scan(
        qwen, prompt, examples, metrics.label("a"), n_permutations=9, progress=False
    )
    figs = {
        "kde": figures.kde_by_group(np.r_[np.zeros(10), np.ones(10) * 3], ["a"] * 10 + ["b"] * 10),
        "hist": figures.score_histogram(result, k=5),
        "curve": figures.training_curve(
            [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5, "val_loss": 1.7}]
        ),
        "heat": figures.layer_position_heatmap(result),
    }
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        png, svg = figures.save(fig, tmp_path / name)
        assert png.read_bytes()[:4] == b"\x89PNG" and "<svg" in svg.read_text()[:500]
    labels = [t.get_text() for t in figs["hist"].axes[0].get_legend().get_texts()]
    assert any("top-5 threshold" in t for t in labels) and any(
        "permutation null" in t for t in labels
    )
    with pytest.raises(ValueError, match="3 values but 2 group labels"):
        figures.kde_by_group([1.0, 2.0, 3.0], ["a", "b"])


def test_kde_integrates_to_one():
    grid = np.linspace(-10, 10, 4001)
    density = figures.gaussian_kde(np.random.default_rng(0).normal(size=50), grid)
    assert abs(density.sum() * (grid[1] - grid[0]) - 1) < 1e-3


def test_views_render_offline_with_soft_slots(qwen, examples, monkeypatch):
    import circuitsvis.utils.render as render

    def no_probe():
        raise AssertionError("sklens views must not probe the internet")

    monkeypatch.setattr(render, "internet_on", no_probe)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    top = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False).top_k(2)
    for view in (
        sklens.neuron_text_view(qwen, prompt, examples, top, n=2),
        sklens.neuron_topk_view(qwen, prompt, examples, top, n=2),
    ):
        page = view._repr_html_()
        assert "unpkg.com" not in page and "var CircuitsVis" in page
        assert "&lt;soft0&gt;" in page and f"L{top.layer[0]} N{top.unit[0]}" in page
        bundle, mount = view.split()
        assert (
            "var CircuitsVis" in bundle and "CircuitsVis.render(" in mount and len(mount) < 50_000
        )


def test_views_render_only_from_tokens_and_arrays(monkeypatch):
    """A view takes token strings and arrays, as circuitsvis does: no model anywhere. The
    attention-sink position 0 is left out and tokens are escaped."""
    _, mount = viz.text_view(
        [["<bos>", "a", "<soft0>"], ["<bos>", "b&c"]],
        [np.array([[900.0, 1.0], [0.5, -0.5], [2.0, 0.0]]), np.array([[800.0, 0.0], [1.5, 3.0]])],
        ["L0 N1", "L1 N2"],
    ).split()
    assert '"tokens": [["a", "&lt;soft0&gt;"], ["b&amp;c"]]' in mount  # position 0 left out
    assert '"activations": [[[[0.5, -0.5]], [[2.0, 0.0]]], [[[1.5, 3.0]]]]' in mount
    assert '"secondDimensionLabels": ["L0 N1", "L1 N2"]' in mount
    _, mount = viz.topk_view(
        [[["<bos>", "x", "y"]]], [[np.array([9.0, 0.25, 0.75])]], ["L0 N3"]
    ).split()
    assert '[[[["x", "y"]]]]' in mount and "[[[[0.25, 0.75]]]]" in mount and "L0 N3" in mount
    assert not hasattr(viz, "neuron_text_view")  # views render; sklens.neuron_text_view runs


def test_evidence_equals_the_activations_it_summarises(qwen, examples):
    """``collect_evidence``: the slot activations are ``slot_activations`` at each neuron's
    selected slot, the extremes are the arg-sorted ends of them, and each view's token
    activations are ``token_activations`` of those examples — so the report drawn from it
    shows what a model pass shows."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    top = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False).top_k(3)
    evidence, table = sklens.collect_evidence(qwen, prompt, examples, top, n=2, group_field="a")
    acts = sklens.slot_activations(qwen, prompt, examples, top)
    for j, row in enumerate(top.itertuples()):
        column = acts[:, j, row.slot].numpy()
        np.testing.assert_allclose(evidence.at_slot()[:, j], column, atol=1e-6)
        assert evidence.most[j] == list(np.argsort(-column, kind="stable")[:2])
        tokens, per_token = evidence.view_data(j)
        chosen = evidence.most[j] + evidence.least[j]
        direct = sklens.scanning.activations.token_activations(
            qwen, prompt, [examples[i] for i in chosen], top.iloc[[j]]
        )
        assert tokens == [t for t, _ in direct]
        for got, (_, want) in zip(per_token, direct, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
        mine = table[table.unit_rank == j]
        assert list(mine[mine.direction == "most"].example) == evidence.most[j]
    assert evidence.groups == [e.meta["a"] for e in examples]


def _tiny_report(qwen_dir, out) -> Path:
    args = study_args(qwen_dir, out, "--permutations", "19", "--report")
    args[args.index("--n-val") + 1] = "16"
    assert main(args) == 0
    return out / "report.html"


def test_report_is_self_contained(qwen_dir, tmp_path, monkeypatch):
    page = _tiny_report(qwen_dir, tmp_path / "run").read_text()
    # the report is drawn from the run's files alone: rebuilding it loads no model and no task
    import sklens.app.study
    import sklens.models.load

    def refuse(*args, **kwargs):
        raise AssertionError("the report must not load a model or a task")

    monkeypatch.setattr(sklens.models.load, "load_model", refuse)
    monkeypatch.setattr(sklens.app.study, "load_task", refuse)
    assert build_report(tmp_path / "run", n=1).read_text().count("CircuitsVis.render(") == 3
    assert page.count("var CircuitsVis") == 1 and page.count("CircuitsVis.render(") == 3
    assert page.count("data:image/png;base64") == 3 + 3  # curve, histogram, heat map + 3 KDEs
    # nothing is loaded from elsewhere: no remote src/href, no remote module import
    assert not re.search(r"""(src|href)\s*=\s*["']https?://|from\s+["']https?://""", page)
    assert "Significance (permutation null; in-sample)" in page
    assert "Top neurons (in-sample: the selection set of 16 examples)" in page
    assert "Held-out confirmation (confirm split, 8 examples)" in page
    # the first screen: what was run, the verdict, then the top units; the settings come last
    order = ["<h1>", "<h2>Verdict</h2>", "<li>Found: the top 3 of", "<h2>Top neurons", "<table",
             "<h2>Training and scores</h2>", "<h2>Settings</h2>"]  # fmt: skip
    assert [page.index(mark) for mark in order] == sorted(page.index(mark) for mark in order)
    assert page.index("<h2>Settings</h2>") > page.rindex("<section class='neuron'>")

    # A table that this run did not write describes other neurons: the report refuses the
    # directory rather than show it (a run replaces the whole directory, so only a hand-made
    # change can put it there), and likewise an edited summary.
    run = tmp_path / "run"
    pd.DataFrame({"layer": [0], "unit": [0], "stale_marker": [1.0]}).to_csv(
        run / "consensus.csv", index=False
    )
    with pytest.raises(RunDirError, match="mixes files from different runs: consensus.csv is not"):
        build_report(run)
    (run / "consensus.csv").unlink()
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["seeds"] = "0,1"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="summary.json is not what its manifest.json lists"):
        build_report(run)


def _chromium() -> str | None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            capture_output=True,
            env=env,
        )
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    return "Debian's chromium and chromium-driver are not installed and could not be installed"


@pytest.mark.browser
@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_network(qwen_dir, tmp_path):
    reason = _chromium()
    if reason:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    page = _tiny_report(qwen_dir, tmp_path / "run")
    shot = ARTIFACTS / "report.png"
    check = [sys.executable, str(ROOT / "tests" / "browser_check.py"), str(page), str(shot)]
    # no network at all: a fresh network namespace with only loopback (for chromedriver)
    isolated = [
        "unshare",
        "-n",
        "sh",
        "-c",
        'ip link set lo up 2>/dev/null; exec "$@"',
        "sh",
        *check,
    ]
    proc = subprocess.run(isolated, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(found["mounts"]) == 3 and all(m["children"] > 10 for m in found["mounts"])
    assert all("<soft0>" in m["text"] and "<soft2>" in m["text"] for m in found["mounts"])
    assert all("The" in m["text"] for m in found["mounts"])  # the examples' own words
    assert found["images"] and all(found["images"])
    assert found["selects"] >= 3
    assert found["errors"] == []
    assert shot.exists() and shot.stat().st_size > 10_000


def test_the_causal_sentence_says_what_the_test_could_detect_and_what_is_excluded():
    from sklens.app.verdict import causal_sentence

    row = {
        "mode": "zero", "d_loss": 0.002, "d_loss_lo": -0.001, "d_loss_hi": 0.005,
        "random_d_loss_median": 0.001, "p_loss": 0.4, "n_random": 199, "mde_loss": 0.03,
        "bound_loss": 0.004, "bound_loss_share_of_prompt": 0.02, "positive_d_loss": 0.5,
        "positive_p_loss": 0.005, "positive_n_neurons": 10,
    }  # fmt: skip
    text = causal_sentence(row)
    assert "+0.0020 [-0.0010, +0.0050] against a random median of +0.0010" in text
    assert "(rank p = 0.400 among 199 random sets)" in text
    assert "an excess beyond ±0.0300 significant" in text
    assert "exclude an excess larger than 0.0040 nats (2.0% of the prompt's own effect)" in text
    assert "Positive control (10 units): +0.5000, rank p = 0.005: detected at 0.05." in text
    weak = causal_sentence({**row, "n_random": 5, "mde_loss": float("inf")})
    assert "These random sets cannot make any change significant at 0.05." in weak
