"""Association measures against scipy; held-out confirmation; seed stability; baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

import sklens
from sklens.confirm.held_out import held_out
from sklens.confirm.stability import seed_stability
from sklens.scanning import metrics
from sklens.stats import measures
from tests.helpers import corrcoef_rows


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    n = 80
    groups = rng.integers(0, 3, n)
    y = (rng.uniform(size=n) < 0.4).astype(float)
    acts = rng.normal(size=(n, 4))
    acts[:, 0] += 2 * y  # separates the classes
    acts[:, 1] = np.round(acts[:, 1] + groups, 1)  # ties, and tracks the groups
    acts[:, 2] = np.exp(acts[:, 2])  # monotone, skewed
    return torch.from_numpy(acts), torch.from_numpy(y), groups


def test_measures_match_scipy(data):
    acts, y, groups = data
    a, yy = acts.numpy(), y.numpy()
    cont = torch.from_numpy(a[:, 3] + 0.5 * a[:, 2])
    for j in range(4):
        assert measures.spearman(acts, cont)[j] == pytest.approx(
            sps.spearmanr(a[:, j], cont.numpy())[0], abs=1e-10
        )
        assert measures.pearson(acts, cont)[j] == pytest.approx(
            sps.pearsonr(a[:, j], cont.numpy())[0], abs=1e-10
        )
        u = sps.mannwhitneyu(a[yy == 1, j], a[yy == 0, j]).statistic
        assert measures.auroc(acts, y)[j] == pytest.approx(
            u / ((yy == 1).sum() * (yy == 0).sum()), abs=1e-10
        )
        h, p = sps.kruskal(*(a[groups == g, j] for g in range(3)))
        ours_h, ours_p = measures.kruskal_wallis(acts, list(groups))
        assert ours_h[j] == pytest.approx(h, rel=1e-9) and ours_p[j] == pytest.approx(p, rel=1e-6)
    d = measures.cohens_d(acts, y)[0]
    x1, x0 = a[yy == 1, 0], a[yy == 0, 0]
    pooled = np.sqrt(
        ((len(x1) - 1) * x1.var(ddof=1) + (len(x0) - 1) * x0.var(ddof=1)) / (len(a) - 2)
    )
    assert d == pytest.approx((x1.mean() - x0.mean()) / pooled, rel=1e-10)
    eta = measures.eta_squared(acts, list(groups))[1]
    means = np.array([a[groups == g, 1].mean() for g in groups])
    assert eta == pytest.approx(
        ((means - a[:, 1].mean()) ** 2).sum() / ((a[:, 1] - a[:, 1].mean()) ** 2).sum()
    )


def test_partial_correlation_removes_a_confounder():
    rng = np.random.default_rng(1)
    confound = rng.normal(size=200)
    act = confound + 0.1 * rng.normal(size=200)
    metric = confound + 0.1 * rng.normal(size=200)
    a, m, c = (
        torch.from_numpy(act[:, None]),
        torch.from_numpy(metric),
        torch.from_numpy(confound[:, None]),
    )
    assert measures.pearson(a, m)[0] > 0.9
    # reference: correlation of least-squares residuals, computed with numpy
    design = np.c_[np.ones(200), confound]
    res = [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in (act, metric)]
    expected = np.corrcoef(*res)[0, 1]
    assert measures.partial_pearson(a, m, c)[0] == pytest.approx(expected, abs=1e-10)
    assert abs(expected) < 0.3


def test_measure_errors(data):
    acts, y, groups = data
    with pytest.raises(ValueError, match="binary metric, got 3"):
        measures.auroc(acts, torch.tensor(groups, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least two groups"):
        measures.eta_squared(acts, ["a"] * len(acts))


def test_neuron_measures_for_a_top_k_table(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = sklens.scan(
        qwen, prompt, examples, metrics.label("op", positive="plus"), progress=False
    )
    top = result.top_k(4)
    table = sklens.neuron_measures(
        qwen,
        prompt,
        examples,
        top,
        result.metric_values,
        measures=("pearson", "auroc", "eta_squared", "partial_pearson"),
        group_by="op",
        covariates=("a",),
    )
    np.testing.assert_allclose(table.pearson, top["corr"], atol=1e-6)
    assert ((table.auroc > 0.5) == (top["corr"] > 0)).all()
    with pytest.raises(ValueError, match="unknown measures"):
        sklens.neuron_measures(qwen, prompt, examples, top, result.metric_values, measures=("mi",))


def test_last_token_baseline_scan(qwen, examples):
    result = sklens.scan(qwen, None, examples, metrics.label("a"), progress=False)
    assert result.corr.shape == (2, qwen.cfg.d_mlp, 1)
    assert result.settings.positions == "last_instruction_token"
    acts = []
    for e in examples:
        ids = qwen.tokenizer.apply_chat_template(
            [{"role": "user", "content": e.instruction}], tokenize=False, add_generation_prompt=True
        )
        ids = qwen.tokenizer(ids, add_special_tokens=False)["input_ids"]
        _, cache = qwen.run_with_cache(torch.tensor([ids]), names_filter="blocks.1.mlp.hook_post")
        acts.append(cache["blocks.1.mlp.hook_post"][0, -1].double().numpy())
    expected = corrcoef_rows(
        np.stack(acts)[:, :, None], np.array([e.meta["a"] for e in examples], float)
    )
    assert np.nanmax(np.abs(result.corr[1].numpy() - expected)) <= 1e-5


def test_held_out_shows_the_winners_curse(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=len(examples))  # a metric unrelated to the model: pure selection bias
    table = held_out(qwen, prompt, examples, noise.tolist(), k=5, progress=False)
    assert table.attrs["n_select"] + table.attrs["n_heldout"] == len(examples)
    assert (table.r_select.abs() > table.r_heldout.abs()).mean() >= 0.8
    assert ((table.r_lo <= table.r_heldout) & (table.r_heldout <= table.r_hi)).all()
    binary = held_out(
        qwen,
        prompt,
        examples,
        metrics.label("op", positive="plus"),
        k=3,
        progress=False,
        n_boot=100,
    )
    assert {"auroc", "auroc_lo", "auroc_hi", "cohens_d"} <= set(binary.columns)


def test_seed_stability_reports_overlap_and_consensus(qwen, examples):
    result = seed_stability(
        qwen,
        examples[:16],
        examples[16:],
        metrics.label("a"),
        seeds=(0, 1),
        k=5,
        n_slots=3,
        steps=2,
        progress=False,
    )
    assert set(result.tops) == {"seed0", "seed1", "untrained", "last_token"}
    assert result.jaccard.loc["seed0", "seed0"] == 1.0
    assert 0.0 <= result.jaccard.loc["seed0", "seed1"] <= 1.0
    assert result.rank_corr.loc["seed1", "seed1"] == pytest.approx(1.0)
    assert len(result.consensus) == 5
    assert (result.consensus.min_abs_score <= result.consensus.mean_abs_score + 1e-12).all()
    assert set(result.summary()) == {"mean_jaccard", "mean_rank_corr"}


def test_confirmation_reads_the_neurons_and_a_loss_in_one_pass(qwen, examples, monkeypatch):
    """confirm_neurons: one pass gives each neuron's held-out r, equal to numpy.corrcoef of
    run_with_cache's activations against the loss computed from full logits."""
    from sklens.confirm import held_out as held_out_module
    from tests.helpers import reference_losses, reference_slot_acts

    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=4)
    select, confirm = examples[:24], examples[24:]
    top = sklens.scan(qwen, prompt, select, metrics.loss(), progress=False).top_k(5)
    passes = []
    real = held_out_module.batched_pass
    monkeypatch.setattr(
        held_out_module, "batched_pass", lambda *a, **k: passes.append(1) or real(*a, **k)
    )
    table = sklens.confirm_neurons(
        qwen, prompt, confirm, metrics.loss(), top, measures=("spearman",), progress=False
    )
    assert len(passes) == 1
    acts = reference_slot_acts(qwen, prompt, confirm, [0, 1])  # (N, L, d, k)
    picked = acts[:, top.layer, top.unit, top.slot]  # (N, K)
    losses = reference_losses(qwen, prompt, confirm)
    expected = [np.corrcoef(picked[:, j], losses)[0, 1] for j in range(len(top))]
    np.testing.assert_allclose(table.r_heldout, expected, atol=1e-4)
    rho = [sps.spearmanr(picked[:, j], losses).statistic for j in range(len(top))]
    np.testing.assert_allclose(table.spearman, rho, atol=1e-4)


def test_compare_scans_needs_two_seed_scans():
    from sklens.confirm.stability import compare_scans

    with pytest.raises(ValueError, match="at least two scans named 'seed"):
        compare_scans({})
