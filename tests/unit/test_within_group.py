"""Within-group scans and the calibration of per-neuron p-values (science review #4, #5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sklens
from sklens.scanning import metrics
from sklens.scanning.precomputed import scan_activations
from sklens.scanning.result import Scan
from tests.helpers import corrcoef_rows, reference_slot_acts


def _residualise(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``x`` minus its group means along axis 0 (least squares on group indicators)."""
    dummies = (groups[:, None] == np.unique(groups)[None]).astype(float)
    flat = x.reshape(len(x), -1)
    coef, *_ = np.linalg.lstsq(dummies, flat, rcond=None)
    return (flat - dummies @ coef).reshape(x.shape)


def test_grouped_scan_is_the_partial_correlation_on_the_group(qwen, examples):
    """corr = numpy's r of group-residualised activations and metric (run_with_cache); the
    permuted scores are the same statistic on the permuted metric; marginal_corr is plain r."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = sklens.scan(
        qwen,
        prompt,
        examples,
        metrics.label("a"),
        permutation_groups="op",
        n_permutations=5,
        batch_size=7,
        progress=False,
    )
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])  # (N, L, d, k)
    groups = np.array([e.meta["op"] for e in examples])
    values = result.metric_values.numpy()
    partial = corrcoef_rows(_residualise(acts, groups), _residualise(values, groups))
    assert np.nanmax(np.abs(result.corr.numpy() - partial)) <= 1e-5
    assert np.nanmax(np.abs(result.marginal_corr.numpy() - corrcoef_rows(acts, values))) <= 1e-5
    assert np.nanmax(np.abs(result.corr.numpy() - result.marginal_corr.numpy())) > 0.05
    for b in range(5):
        perm = result.null.perms[b].numpy()
        assert (groups[perm] == groups).all()  # permutations stay inside the groups
        permuted = _residualise(values[perm], groups)
        direct = np.nanmax(corrcoef_rows(_residualise(acts, groups), permuted), axis=-1)
        assert np.nanmax(np.abs(result.null.scores["max"][b].numpy() - direct)) <= 1e-5
    assert result.settings.statistic == "within-group pearson (op)"


def test_grouped_scan_saves_and_loads(qwen, examples, tmp_path):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.scan(
        qwen, prompt, examples, metrics.label("a"), permutation_groups="op", progress=False
    )
    loaded = Scan.load(result.save(tmp_path / "scan.safetensors"))
    torch.testing.assert_close(loaded.corr, result.corr, equal_nan=True)
    torch.testing.assert_close(loaded.marginal_corr, result.marginal_corr, equal_nan=True)


def test_metric_constant_within_groups_is_an_error(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    with pytest.raises(ValueError, match="constant within every group of 'op'"):
        sklens.scan(
            qwen,
            prompt,
            examples,
            metrics.label("op", "plus"),
            permutation_groups="op",
            progress=False,
        )


def _grouped_world(rng: np.random.Generator, n_trackers: int):
    """4 groups × 30 examples; the metric = group effect + noise. Neuron 0 tracks the metric
    *within* groups (within r ≈ 0.85); ``n_trackers`` neurons track only the group."""
    n, d, k = 120, 200, 2
    groups = np.repeat(np.arange(4), 30)
    effect = np.array([-3.0, -1.0, 1.0, 3.0])[groups]
    noise = rng.normal(size=n)
    values = effect + noise
    acts = rng.normal(size=(n, 1, k, d))
    acts[:, 0, :, 0] = (noise + 0.6 * rng.normal(size=n))[:, None]
    acts[:, 0, :, 1 : 1 + n_trackers] += 2 * effect[:, None, None]
    return torch.from_numpy(acts), torch.from_numpy(values), groups.tolist()


@pytest.mark.parametrize("trial", range(5))
def test_planted_within_group_neuron_is_found_among_group_trackers(trial):
    """The review's case: 10 of 200 neurons track the group. With the marginal statistic the
    planted within-group neuron never passed FWER (median p = 1.0); the grouped scan finds it."""
    rng = np.random.default_rng(trial)
    acts, values, groups = _grouped_world(rng, n_trackers=10)
    result = scan_activations(
        acts, values, n_permutations=199, permutation_seed=trial, groups=groups
    )
    p = result.p_values("max", "fwer")
    assert float(p[0, 0]) == pytest.approx(1 / 200)
    assert result.top_k(1).unit.iloc[0] == 0
    assert (p[0, 1:11] > 0.05).all()  # group trackers are not within-group associated
    # what sklens computed before: the marginal r against within-block permutations; its
    # max-statistic null is set by the group trackers, so the planted neuron is missed
    a = acts[:, 0].numpy().reshape(len(values), -1)  # (n, k·d)
    y = values.numpy()
    marginal = np.abs(np.nanmax(corrcoef_rows(acts[:, 0].numpy(), y), axis=0))  # (d,)
    null = [np.abs(corrcoef_rows(a, y[result.null.perms[b].numpy()])).max() for b in range(199)]
    assert (1 + np.sum(np.array(null) >= marginal[0])) / 200 > 0.05


def test_within_group_null_keeps_fwer():
    rng = np.random.default_rng(7)
    trials, hits = 40, 0
    for t in range(trials):
        acts, values, groups = _grouped_world(rng, n_trackers=10)
        acts[:, 0, :, 0] = torch.from_numpy(rng.normal(size=(120, 2)))  # no planted neuron
        result = scan_activations(
            acts, values, n_permutations=99, permutation_seed=t, groups=groups
        )
        hits += int((result.p_values("max", "fwer") <= 0.05).any())
    assert hits / trials <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / trials)


def test_per_neuron_p_values_are_calibrated_for_every_neuron_type():
    """Complete null, three neuron types (20 independent slots, one value copied to all slots,
    a sparse spike): per-neuron p ≤ 0.05 for ~5% of each type. The pooled p is not (the review
    measured 20% for the independent-slot type, 12% in this mix), which is why it is not called a p-value."""
    rng = np.random.default_rng(3)
    n, k, per_type, trials = 120, 20, 60, 30
    rates = {"independent": [], "identical": [], "sparse": []}
    pooled_independent = []
    for t in range(trials):
        independent = rng.normal(size=(n, k, per_type))
        identical = np.repeat(rng.normal(size=(n, 1, per_type)), k, axis=1)
        sparse = np.repeat(
            (rng.random(size=(n, 1, per_type)) < 0.03) * rng.normal(3, 1, (n, 1, per_type)), k, 1
        ) + 1e-3 * rng.normal(size=(n, k, per_type))
        acts = torch.from_numpy(np.concatenate([independent, identical, sparse], -1)[:, None])
        values = torch.from_numpy(rng.normal(size=n))
        result = scan_activations(acts, values, n_permutations=199, permutation_seed=t)
        p = result.p_values("max", "unit")[0].numpy()
        pooled = result.p_values("max", "pooled")[0].numpy()
        for j, name in enumerate(rates):
            rates[name].append(np.mean(p[j * per_type : (j + 1) * per_type] <= 0.05))
        pooled_independent.append(np.mean(pooled[:per_type] <= 0.05))
    se = np.sqrt(0.05 * 0.95 / (per_type * trials))
    for name, r in rates.items():
        assert abs(np.mean(r) - 0.05) <= 4 * se + 0.01, (name, np.mean(r))
    assert np.mean(pooled_independent) > 0.09  # the pooled p over-rejects this type (0.12)


def test_neuron_p_equals_a_direct_count():
    rng = np.random.default_rng(0)
    acts = torch.from_numpy(rng.normal(size=(40, 1, 3, 8)))
    values = torch.from_numpy(rng.normal(size=40))
    result = scan_activations(acts, values, n_permutations=49, permutation_seed=1)
    score, _ = result.scores("max")
    null = result.null.scores["max"].abs().numpy()  # (B, 1, 8)
    expected = (1 + (null >= np.abs(score.numpy())[None]).sum(0)) / 50
    np.testing.assert_allclose(result.p_values("max", "unit").numpy(), expected)
