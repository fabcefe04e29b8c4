"""Ranked explanations: the rank tests against scipy, a planted property found first on held-out
examples, nothing passing on noise, and the errors."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as ss

import sklens
from sklens.app.cli import main
from sklens.explanation.explain import explain, explain_activations
from sklens.explanation.hypotheses import Hypothesis, candidate_hypotheses, meta_hypotheses
from sklens.stats.rank_tests import (
    average_ranks,
    bootstrap_effects,
    fisher_exact,
    log_odds,
    mann_whitney,
    spearman_test,
)
from tests.helpers import study_args

WORDS = "red blue green small big old new tall short happy".split()


def _marked(n: int, seed: int) -> list[sklens.Example]:
    """Six random words with "apple" (marker A) or "stone" (marker B) at a random place; two
    meta fields that nothing in the text shows (a coin and a number)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        mark = r.random() < 0.5
        words = [r.choice(WORDS) for _ in range(6)]
        words.insert(r.randrange(7), "apple" if mark else "stone")
        meta = {"marker": "A" if mark else "B", "coin": r.random() < 0.5, "num": r.randrange(100)}
        out.append(sklens.Example(" ".join(words) + ".", "ok", meta))
    return out


def test_rank_tests_equal_scipy():
    rng = np.random.default_rng(0)
    acts = torch.tensor(rng.integers(0, 6, (50, 4)).astype(float))  # many ties
    positive = torch.tensor(rng.random(50) < 0.4)
    auroc, p = mann_whitney(acts, positive)
    for j in range(4):
        a, b = acts[positive, j].numpy(), acts[~positive, j].numpy()
        ref = ss.mannwhitneyu(a, b, method="asymptotic", use_continuity=False)
        assert auroc[j] == pytest.approx(ref.statistic / (len(a) * len(b)), abs=1e-12)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-9)
    assert torch.allclose(average_ranks(acts.T).T, torch.tensor(ss.rankdata(acts, axis=0)))
    values = torch.tensor(rng.normal(size=50))
    rho, p, lo, hi = spearman_test(acts, values)
    for j in range(4):
        ref = ss.spearmanr(acts[:, j], values).statistic
        z = np.arctanh(ref) / np.sqrt(1.06 / 47)
        assert rho[j] == pytest.approx(ref, abs=1e-12)
        assert p[j] == pytest.approx(2 * ss.norm.sf(abs(z)), rel=1e-9)
        assert lo[j] < rho[j] < hi[j]
    for table in ([3, 7, 9, 2], [0, 10, 10, 0], [5, 5, 5, 5], [1, 0, 0, 30]):
        a, b, c, d = table
        assert fisher_exact(*table) == pytest.approx(
            ss.fisher_exact([[a, b], [c, d]]).pvalue, rel=1e-9
        )
    value, low, high = log_odds(10, 2, 3, 9)
    assert value == pytest.approx(np.log(10.5 * 9.5 / (2.5 * 3.5)))
    assert low < value < high


def test_bootstrap_intervals_equal_a_loop_over_the_same_resamples():
    rng = np.random.default_rng(1)
    acts = torch.tensor(rng.normal(size=(30, 2)))
    positive = torch.tensor(rng.random(30) < 0.5)
    lo, hi = bootstrap_effects(acts, positive, "auroc", n_boot=200, seed=3)
    index = torch.randint(0, 30, (200, 30), generator=torch.Generator().manual_seed(3))
    for j in range(2):
        values = []
        for rows in index:
            a, x = acts[rows, j].numpy(), positive[rows].numpy()
            if 0 < x.sum() < len(x):
                u = ss.mannwhitneyu(a[x], a[~x]).statistic
                values.append(u / (x.sum() * (~x).sum()))
        assert (lo[j], hi[j]) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    groups = torch.tensor(rng.integers(0, 3, 30))
    lo, hi = bootstrap_effects(acts, groups, "eta_squared", n_boot=100, seed=4)
    index = torch.randint(0, 30, (100, 30), generator=torch.Generator().manual_seed(4))
    eta = [
        float(sklens.stats.measures.eta_squared(acts[rows, :1], groups[rows].tolist())[0])
        for rows in index
    ]
    assert (lo[0], hi[0]) == pytest.approx(tuple(np.quantile(eta, [0.025, 0.975])))


def test_the_planted_property_is_the_top_explanation_on_held_out_examples(qwen):
    data = _marked(200, seed=0)
    select, held = data[:100], data[100:]
    prompt = sklens.SoftPrompt.init_for(qwen, 4, seed=0)
    result = sklens.scan(qwen, prompt, select, sklens.metrics.label("marker", "A"), progress=False)
    top = result.top_k(3)
    found = explain(qwen, prompt, held, top, n_boot=200, progress=False)
    best = found.best()
    # the field, before any n-gram of "apple" or "stone" that ties with it (or is merged into it)
    assert best.hypothesis.iloc[0].split(" ≡ ")[0] == "marker = B" and best.kind.iloc[0] == "meta"
    assert best.passes.iloc[0] and best.n.iloc[0] == 100
    # it ranked the held-out activations at the selected slot (slot_activations, itself
    # checked against run_with_cache in test_activations)
    acts = sklens.slot_activations(qwen, prompt, held, top)
    picked = acts[:, 0, int(top.slot.iloc[0])]
    marker_b = torch.tensor([e.meta["marker"] == "B" for e in held])
    a = picked[marker_b].numpy()
    b = picked[~marker_b].numpy()
    assert best.effect.iloc[0] == pytest.approx(
        ss.mannwhitneyu(a, b).statistic / (len(a) * len(b)), abs=1e-6
    )
    assert found.summary[0].startswith(f"L{top.layer[0]} N{top.unit[0]} @slot{top.slot[0]}: ")
    assert ": marker = B" in found.summary[0] and "held-out AUROC" in found.summary[0]
    # the meta fields that nothing in the text shows do not pass for the top unit
    rows = found.table[
        (found.table.label == best.label.iloc[0])
        & found.table.hypothesis.isin(["coin = True", "num"])
    ]
    assert len(rows) == 2 and not rows.passes.any()


def test_nothing_passes_on_noise(qwen):
    data = _marked(160, seed=1)
    # noise activations against every candidate of real examples: nothing passes, in 10 draws
    hypotheses, _ = candidate_hypotheses(qwen.tokenizer, data)
    assert {h.kind for h in hypotheses} == {"meta", "surface", "ngram"}
    units = pd.DataFrame({"layer": [0] * 5, "unit": range(5), "slot": [0] * 5})
    passed = 0
    for seed in range(10):
        noise = torch.randn(160, 5, generator=torch.Generator().manual_seed(seed))
        found = explain_activations(noise, units, hypotheses, n_boot=50)
        passed += bool(found.table.passes.any())
        assert all("none of" in line for line in found.summary) or found.table.passes.any()
    assert passed <= 1  # BH over the whole table holds the chance of any pass near 5%
    empty = explain_activations(noise, units, [])  # nothing testable (a tiny split): said so
    assert empty.table.empty and empty.summary[0] == "L0 N0 @slot0: no hypothesis could be tested"
    # end to end: a metric of pure noise selects units, whose held-out activation no meta field
    # that is independent of the text explains
    prompt = sklens.SoftPrompt.init_for(qwen, 4, seed=0)
    noise = sklens.metrics.values(np.random.default_rng(0).normal(size=80))
    top = sklens.scan(qwen, prompt, data[:80], noise, progress=False).top_k(5)
    found = explain(
        qwen, prompt, data[80:], top, fields=["coin", "num"], surface=False, ngrams=(),
        n_boot=50, progress=False,
    )  # fmt: skip
    assert len(found.table) == 10 and not found.table.passes.any()


def test_hypotheses_and_what_was_left_out():
    data = _marked(40, seed=2)
    for i, e in enumerate(data):  # a three-valued field, a field missing on some, a list field
        e.meta.update(
            {"colour": ["x", "y", "z"][i % 3], "partial": i if i % 4 else None, "bag": [1, 2]}
        )
    found, skipped = meta_hypotheses(data)
    names = {h.name: h for h in found}
    assert {"marker = B", "coin = True", "num", "colour = x", "colour (η², 3 groups)"} <= set(names)
    assert names["num"].measure == "spearman" and names["colour (η², 3 groups)"].measure == (
        "eta_squared"
    )
    assert names["partial"].known.sum() == 30  # None leaves the example out of that test
    # two fields that are the same feature on these examples are one hypothesis
    for e in data:
        e.meta["label"] = "yes" if e.meta["marker"] == "A" else "no"
    tokenizer = sklens.tiny_model().tokenizer
    found, _ = candidate_hypotheses(tokenizer, data, surface=False, ngrams=())
    assert "marker = B ≡ label ≠ yes" in {h.name for h in found}  # label = yes is marker = A
    assert skipped == {"meta.bag": "holds lists or dicts"}
    with pytest.raises(ValueError, match=r"no example has the meta field\(s\) \['colr'\]"):
        meta_hypotheses(data, ["colr"])


def test_explain_refuses_the_selection_examples_and_tables_without_slots(qwen):
    data = _marked(40, seed=3)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    top = sklens.scan(
        qwen, prompt, data[:20], sklens.metrics.label("marker", "A"), progress=False
    ).top_k(2)
    with pytest.raises(ValueError, match="the examples that selected the units"):
        explain(qwen, prompt, data[:20], top, progress=False)
    with pytest.raises(ValueError, match="needs each unit's slot"):
        explain(qwen, prompt, data[20:], [(0, 1)], progress=False)
    with pytest.raises(ValueError, match="at least 10 held-out examples, got 5"):
        explain(qwen, prompt, data[20:25], top, progress=False)
    with pytest.raises(ValueError, match=r"top_fraction must be in \(0, 0.5\]"):
        explain(qwen, prompt, data[20:], top, top_fraction=0.7, progress=False)


def test_the_run_writes_explanations_and_the_command_prints_them(qwen_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = study_args(qwen_dir, out)
    args[args.index("--n-confirm") + 1] = "12"
    assert main(args) == 0
    table = pd.read_csv(out / "explanations.csv")
    neurons = pd.read_csv(out / "neurons.csv")
    assert table.label.nunique() == len(neurons) == 3
    capsys.readouterr()
    assert main(["explain", str(out), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ranked on the confirm split (12 held-out examples)" in printed
    for row in neurons.itertuples():
        assert printed.count(f"L{row.layer} N{row.unit} @slot{row.slot}") == 2
    assert main(["explain", str(tmp_path / "nowhere")]) == 2
    assert "has no summary.json" in capsys.readouterr().err
    (out / "explanations.csv").unlink()
    assert main(["explain", str(out)]) == 2
    assert "mixes files from different runs" in capsys.readouterr().err


def test_a_small_perfectly_separated_group_does_not_outrank_a_property_that_explains_more():
    """Planted: 7 of 160 examples with the lowest activations (AUROC 0: perfect separation of a
    small group, 'n_numbers = 7' on the main job) and a half split at AUROC ≈ 0.95. The half
    explains far more of how the activation varies and must rank first; each strength equals
    |Spearman ρ| of the activation with the property's indicator (scipy)."""
    rng = np.random.default_rng(0)
    half = np.arange(160) % 2 == 0
    acts = rng.normal(size=160) + 2.3 * half  # AUROC of `half` near 0.95
    small = np.zeros(160, dtype=bool)
    small[np.argsort(acts)[:7]] = True  # the seven lowest: perfectly separated
    known = np.ones(160, dtype=bool)
    hypotheses = [
        Hypothesis("small", "meta", "auroc", small, known),
        Hypothesis("half", "meta", "auroc", half, known),
    ]
    units = pd.DataFrame({"layer": [0], "unit": [0], "slot": [0]})
    table = explain_activations(torch.tensor(acts)[:, None], units, hypotheses, n_boot=50).table
    by_name = table.set_index("hypothesis")
    assert by_name.loc["small", "effect"] == 0.0  # a perfect separation by AUROC
    assert 0.9 < by_name.loc["half", "effect"] < 0.99
    assert by_name.loc["half", "rank"] == 1 and by_name.loc["small", "rank"] == 2
    for name, values in (("small", small), ("half", half)):
        rho = ss.spearmanr(acts, values).statistic
        assert by_name.loc[name, "strength"] == pytest.approx(abs(rho), abs=1e-9)
