"""Permutation nulls, multiple-comparison control, intervals."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from statsmodels.stats.multitest import multipletests

import sklens
from sklens.scanning import metrics
from sklens.scanning.precomputed import scan_activations
from sklens.stats import fisher_ci, q_values
from sklens.stats.permutation import permutations
from tests.helpers import corrcoef_rows, reference_slot_acts, scan_op, without_type_checks


@pytest.mark.parametrize(
    ("metric_kind", "n_permutations", "passes"),
    [
        ("label", 6, 1),  # blocks of 10 go to the null during the pass, the rest at the end
        ("label", 60, 1),  # N ≤ B: every activation held, the null computed at the end
        ("loss", 60, 1),  # a model-based metric, N ≤ B: the same pass, from held activations
        ("loss", 6, 2),  # a model-based metric, N > B: a second pass
    ],
)
def test_streaming_permuted_correlations_match_direct(
    qwen, examples, metric_kind, n_permutations, passes, monkeypatch
):
    scan_module = importlib.import_module("sklens.scanning.scan")

    monkeypatch.setattr(scan_module, "_BLOCK", 10)
    calls = []
    real_pass = scan_module._pass
    monkeypatch.setattr(
        scan_module, "_pass", lambda *a, **k: calls.append(k["desc"]) or real_pass(*a, **k)
    )
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    metric = metrics.label("a") if metric_kind == "label" else metrics.loss()
    result = sklens.scan(
        qwen,
        prompt,
        examples,
        metric,
        n_permutations=n_permutations,
        permutation_seed=3,
        batch_size=5,
        progress=False,
    )
    assert len(calls) == passes, calls
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])  # (N, L, d, k)
    values = result.metric_values.numpy()
    for b in range(0, n_permutations, max(1, n_permutations // 6)):
        permuted = values[result.null.perms[b].numpy()]
        direct = np.nanmax(corrcoef_rows(acts, permuted), axis=-1)
        assert np.nanmax(np.abs(result.null.scores["max"][b].numpy() - direct)) <= 1e-5
        sym = corrcoef_rows(acts, permuted)
        pick = np.nanargmax(np.abs(np.nan_to_num(sym, nan=-1.0)), axis=-1)
        direct_abs = np.take_along_axis(sym, pick[..., None], -1)[..., 0]
        got_abs = result.null.scores["absmax"][b].numpy()
        assert np.nanmax(np.abs(got_abs - direct_abs)) <= 1e-5


@pytest.fixture
def fixed_acts(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    pairs = [(L, i) for L in range(2) for i in range(qwen.cfg.d_mlp)]
    acts = sklens.slot_activations(qwen, prompt, examples, pairs)  # (N, 256, k)
    return acts.reshape(len(examples), 2, qwen.cfg.d_mlp, 3).permute(0, 1, 3, 2).double()


def test_fwer_controls_false_positives_under_an_independent_metric(fixed_acts):
    rng = np.random.default_rng(0)
    trials, hits, min_p = 60, 0, []
    for t in range(trials):
        values = torch.from_numpy(rng.normal(size=fixed_acts.shape[0]))
        result = scan_activations(fixed_acts, values, n_permutations=99, permutation_seed=t)
        p = result.p_values("max", "fwer")
        hits += int((p <= 0.05).any())
        min_p.append(float(np.nanmin(p.numpy())))
    rate = hits / trials
    assert rate <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / trials)
    # the top neuron's adjusted p-value is roughly uniform under the null
    assert 0.3 <= np.mean(np.array(min_p) <= 0.5) <= 0.7


def test_planted_neuron_is_significant(fixed_acts):
    rng = np.random.default_rng(1)
    signal = fixed_acts[:, 1, 2, 77]
    values = signal + 0.3 * signal.std() * torch.from_numpy(rng.normal(size=len(signal)))
    result = scan_activations(fixed_acts, values, n_permutations=99, permutation_seed=0)
    significant = result.significant(0.05, "fwer")
    assert (1, 77) in set(zip(significant.layer, significant.unit, strict=True))
    assert significant.p_fwer.iloc[0] == pytest.approx(1 / 100)
    assert len(result.significant(0.05, "fdr_bh")) >= len(significant)
    null = result.null.max_null("max")
    assert null.shape == (99,) and float(null.max()) < float(result.top_k(1).score.abs().iloc[0])


def test_bh_and_by_match_statsmodels():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-3, size=20)])
    p[[3, 17]] = np.nan
    ok = ~np.isnan(p)
    for ours, theirs in (("bh", "fdr_bh"), ("by", "fdr_by")):
        expected = multipletests(p[ok], method=theirs)[1]
        got = q_values(p, ours)
        np.testing.assert_allclose(got[ok], expected, rtol=1e-12)
        assert np.isnan(got[~ok]).all()


def test_permutations_respect_exchangeability_blocks():
    groups = ["a", "b", "a", "c", "b", "a"]
    perms = permutations(6, 20, seed=0, groups=groups)
    for perm in perms.tolist():
        assert [groups[i] for i in perm] == groups
    with pytest.raises(ValueError, match="5 group labels for 6 examples"):
        permutations(6, 2, seed=0, groups=groups[:5])


def test_null_survives_save_and_load(qwen, examples, tmp_path):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = scan_op(qwen, prompt, examples, "plus", n_permutations=9, permutation_groups="big")
    loaded = sklens.Scan.load(result.save(tmp_path / "s.safetensors"))
    torch.testing.assert_close(loaded.p_values(), result.p_values(), equal_nan=True)
    assert {"p_fwer", "q_bh"} <= set(loaded.top_k(3).columns)
    with pytest.raises(ValueError, match="no permutation null"):
        sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False).p_values()


def test_fisher_interval_covers():
    lo, hi = fisher_ci(0.5, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.30, abs=0.02)
    assert np.isnan(fisher_ci(0.5, 3)[0])


def test_slot_scores_are_the_documented_rules():
    """``ranking.slot_scores`` (the scan's and the null's one rule function) against a direct
    numpy reading of the two rules, with a neuron NaN at every slot and one NaN at one slot."""
    from sklens.stats.ranking import slot_scores

    corr = torch.tensor(
        [[0.2, -0.9, 0.5], [-0.3, -0.1, -0.6], [float("nan")] * 3, [0.4, float("nan"), -0.7]],
        dtype=torch.float64,
    )
    score, slot = slot_scores(corr, "max")
    assert score[:2].tolist() == [0.5, -0.1] and slot[[0, 1, 3]].tolist() == [2, 1, 0]
    assert score[2].isnan() and score[3].item() == 0.4
    score, slot = slot_scores(corr, "absmax")
    assert score[[0, 1, 3]].tolist() == [-0.9, -0.6, -0.7] and score[2].isnan()
    with without_type_checks(), pytest.raises(ValueError, match="reduce must be 'max'"):
        slot_scores(corr, "mean")


def test_fdr_q_values_adjust_the_per_neuron_p_by_default():
    """Science review #4: BH/BY adjust each neuron's own permutation p (valid per neuron), not
    the pooled-null p, unless asked; ``top_k``'s ``q_bh`` is that same q."""
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(40, 2, 3, 16, generator=g)
    metric = acts[:, 0, 1, 4] + torch.randn(40, generator=g)
    result = scan_activations(acts, metric, n_permutations=49)
    neuron_p = result.p_values(method="unit").numpy()
    pooled_p = result.p_values(method="pooled").numpy()
    assert not np.allclose(neuron_p, pooled_p)
    np.testing.assert_allclose(result.q_values().numpy(), q_values(neuron_p, "bh"))
    np.testing.assert_allclose(result.q_values(method="by").numpy(), q_values(neuron_p, "by"))
    np.testing.assert_allclose(result.q_values(p="pooled").numpy(), q_values(pooled_p, "bh"))
    top = result.top_k(5)
    q = result.q_values().numpy()
    assert top.q_bh.tolist() == [q[L, i] for L, i in zip(top.layer, top.unit, strict=True)]


def test_null_leaves_out_slots_that_never_vary():
    """A (unit, slot) whose activation is constant has no r: the null leaves it out of the
    max over slots as the observed score does, for both rules (planted, against numpy)."""
    rng = np.random.default_rng(5)
    acts = torch.from_numpy(rng.normal(size=(40, 1, 3, 4)))  # examples, layers, slots, units
    acts[:, 0, 1, 2] = 7.0  # unit 2 never varies at slot 1
    acts[:, 0, :, 3] = -1.0  # unit 3 never varies at all
    values = torch.from_numpy(rng.normal(size=40))
    result = scan_activations(acts, values, n_permutations=30, chunk=16)
    live = acts.numpy()[:, 0].transpose(0, 2, 1)  # (n, units, slots)
    for b in range(30):
        permuted = values.numpy()[result.null.perms[b].numpy()]
        r = np.array(
            [
                [
                    np.corrcoef(live[:, u, k], permuted)[0, 1]
                    if u != 3 and (u, k) != (2, 1)
                    else np.nan
                    for k in range(3)
                ]
                for u in range(4)
            ]
        )
        expected_max = np.nanmax(r[:3], -1)
        pick = np.nanargmax(np.abs(np.nan_to_num(r[:3], nan=0.0)), -1)
        expected_abs = r[np.arange(3), pick]
        np.testing.assert_allclose(result.null.scores["max"][b, 0, :3], expected_max, atol=1e-5)
        np.testing.assert_allclose(result.null.scores["absmax"][b, 0, :3], expected_abs, atol=1e-5)
        assert (
            result.null.scores["max"][b, 0, 3].isnan()
            and result.null.scores["absmax"][b, 0, 3].isnan()
        )
