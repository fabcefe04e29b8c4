"""Mutual information as a second selection measure: against a numpy estimator on the same bins
(activations from TransformerLens's run_with_cache), its permutation null recomputed by hand,
and a planted unit whose metric depends on |activation| (found by MI, missed by Pearson)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import sklens
from sklens.app.statistics import compare_with_pearson
from sklens.scanning import metrics
from sklens.stats.mutual_info import top_k_overlap
from tests.helpers import arithmetic_examples, reference_losses, reference_slot_acts, scan_op


def numpy_mi(acts: np.ndarray, edges: np.ndarray, metric_bins: np.ndarray) -> np.ndarray:
    """Plug-in MI (nats) of every series ``acts[:, ...]`` binned by ``edges[:, ...]`` (the count
    of edges below the value) with ``metric_bins``: histograms, then Σ p log(p / (p_a p_m))."""
    n = acts.shape[0]
    flat = acts.reshape(n, -1)
    cuts = edges.reshape(edges.shape[0], -1)
    n_bins, n_m = cuts.shape[0] + 1, metric_bins.max() + 1
    out = np.empty(flat.shape[1])
    for j in range(flat.shape[1]):
        codes = (flat[:, j, None] > cuts[None, :, j]).sum(1)
        joint = np.histogram2d(codes, metric_bins, bins=[np.arange(n_bins + 1), np.arange(n_m + 1)])
        p = joint[0] / n
        outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
        nz = p > 0
        out[j] = (p[nz] * np.log(p[nz] / outer[nz])).sum()
    return out.reshape(acts.shape[1:])


def equal_frequency_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-frequency bins by sorting: each value's rank decides its bin (no ties here)."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return (ranks * n_bins) // len(values)


def test_mi_and_its_null_equal_numpy_on_run_with_cache_activations(qwen):
    examples = arithmetic_examples(40, seed=3)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    result = sklens.scan(
        qwen,
        prompt,
        examples,
        metrics.loss(),
        batch_size=6,
        n_permutations=19,
        mi_bins=4,
        progress=False,
    )
    mi = result.mutual_info
    losses = reference_losses(qwen, prompt, examples)
    # the loss takes 40 values: four equal-frequency bins of them
    np.testing.assert_array_equal(mi.metric_bins.numpy(), equal_frequency_bins(losses, 4))
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])  # (n, layers, d_mlp, slots)
    edges = mi.edges.numpy()  # (layers, cuts, d_mlp, slots)
    # the edges were fixed by all 40 examples (one block): each bin holds 10 of them
    counts = np.stack([(acts > edges[None, :, i]).sum(0) for i in range(3)])
    assert np.all(counts == np.array([30, 20, 10])[:, None, None, None])
    expected = numpy_mi(acts, np.moveaxis(edges, 1, 0), mi.metric_bins.numpy())
    assert np.abs(mi.values.numpy() - expected).max() <= 1e-6
    # the null: permutation b permutes the metric bins; the unit's score is its max over slots
    for b in (0, 7, 18):
        perm = mi.null.perms[b].numpy()
        permuted = numpy_mi(acts, np.moveaxis(edges, 1, 0), mi.metric_bins.numpy()[perm])
        null = mi.null.scores["max"][b].numpy()
        assert np.abs(null - permuted.max(-1)).max() <= 1e-5
    # the same permutations as the correlations' null
    assert torch.equal(mi.null.perms, result.null.perms)


def test_edges_fixed_by_the_first_block_bin_every_later_block_alike(qwen):
    examples = arithmetic_examples(150, seed=4)  # more than a SlotBuffer block (128)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=2)
    result = scan_op(qwen, prompt, examples, "minus", batch_size=10, mi_bins=3)
    mi = result.mutual_info
    labels = np.array([e.meta["op"] == "minus" for e in examples])
    np.testing.assert_array_equal(mi.metric_bins.numpy(), labels.astype(int))  # two levels
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])
    expected = numpy_mi(acts, np.moveaxis(mi.edges.numpy(), 1, 0), mi.metric_bins.numpy())
    assert np.abs(mi.values.numpy() - expected).max() <= 1e-6
    # edges from 128 of the 150 examples: each bin still holds about a third of them all
    share = (acts > mi.edges.numpy()[None, :, 0]).mean(0)
    assert np.all(np.abs(share - 2 / 3) <= 0.1)


@pytest.mark.parametrize("seed", range(3))
def test_planted_absolute_value_unit_is_found_by_mi_and_missed_by_pearson(seed):
    g = torch.Generator().manual_seed(seed)
    n, layers, slots, d = 300, 2, 3, 64
    acts = torch.randn(n, layers, slots, d, generator=g)
    layer, slot, unit = 1, seed % slots, 11 + seed
    metric = acts[:, layer, slot, unit].abs() + 0.2 * torch.randn(n, generator=g)
    result = sklens.scan_activations(acts, metric, n_permutations=99, mi_bins=4)
    top = result.mutual_info.top_k(1).iloc[0]
    assert (top.layer, top.unit, top.slot) == (layer, unit, slot)
    assert top.p_fwer <= 0.05
    pearson = result.top_k(10)
    assert (layer, unit) not in set(zip(pearson.layer, pearson.unit, strict=True))
    assert float(result.p_values("max", "fwer")[layer, unit]) > 0.05
    overlap = top_k_overlap(pearson, result.mutual_info.top_k(10))
    assert (layer, unit) in overlap["only_second"]
    assert len(overlap["shared"]) + len(overlap["only_first"]) == 10


def test_planted_linear_unit_is_found_by_both_measures():
    g = torch.Generator().manual_seed(5)
    acts = torch.randn(200, 2, 2, 32, generator=g)
    metric = acts[:, 0, 1, 4] + 0.3 * torch.randn(200, generator=g)
    result = sklens.scan_activations(acts, metric, n_permutations=49, mi_bins=4)
    for table in (result.top_k(1), result.mutual_info.top_k(1)):
        assert (table.layer[0], table.unit[0], table.slot[0]) == (0, 4, 1)


def test_pure_noise_metric_passes_no_unit():
    g = torch.Generator().manual_seed(6)
    acts = torch.randn(120, 2, 2, 32, generator=g)
    result = sklens.scan_activations(
        acts, torch.randn(120, generator=g), n_permutations=99, mi_bins=4
    )
    assert float(result.mutual_info.p_values("fwer").min()) > 0.05


def test_mutual_info_survives_save_and_load(qwen, tmp_path):
    examples = arithmetic_examples(24, seed=1)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.scan(
        qwen, prompt, examples, metrics.label("a"), n_permutations=9, mi_bins=3, progress=False
    )
    loaded = sklens.Scan.load(result.save(tmp_path / "scan.safetensors"))
    assert torch.equal(loaded.mutual_info.values, result.mutual_info.values)
    assert torch.equal(loaded.mutual_info.edges, result.mutual_info.edges)
    assert torch.equal(loaded.mutual_info.p_values("fwer"), result.mutual_info.p_values("fwer"))
    assert loaded.settings.mi_bins == 3


def test_bad_mutual_info_settings_get_clear_errors_before_the_pass(qwen, monkeypatch):
    examples = arithmetic_examples(12, seed=0)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    scan_module = importlib.import_module("sklens.scanning.scan")  # sklens.scan is the function
    monkeypatch.setattr(
        scan_module, "encode", lambda *a, **k: pytest.fail("the pass ran before the check")
    )
    cases = [
        ({"mi_bins": 1}, "mi_bins must be 0"),
        ({"mi_bins": 17}, "2..16"),
        ({"mi_bins": 8}, "at least 16 examples"),
        ({"mi_bins": 4, "permutation_groups": "op"}, "mutual information is marginal"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False, **kwargs)
    no_null = sklens.scan_activations(torch.randn(20, 1, 1, 4), torch.randn(20), mi_bins=2)
    with pytest.raises(ValueError, match="n_permutations=200"):
        no_null.mutual_info.p_values()


def test_comparison_with_pearson_against_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(7)
    acts = torch.randn(150, 2, 3, 40, generator=g)
    metric = acts[:, 0, 0, 3] + acts[:, 1, 2, 9].abs() + 0.3 * torch.randn(150, generator=g)
    result = sklens.scan_activations(acts, metric, n_permutations=49, mi_bins=4)
    table, summary = compare_with_pearson(result, 3)
    pearson = result.scores()[0].abs().flatten().numpy()
    mi = result.mutual_info.scores()[0].flatten().numpy()
    assert summary["spearman_rho_all_units"] == pytest.approx(spearmanr(pearson, mi)[0], abs=1e-9)
    top = set(np.argsort(-pearson)[:3].tolist())
    flat = [layer * 40 + n for layer, n in zip(table.layer, table.unit, strict=True)]
    assert table.in_pearson_top.tolist() == [i in top for i in flat]
    assert summary["shared_with_pearson"] == len(top & set(flat))
    assert summary["shared_top_30"] == len(
        set(np.argsort(-pearson)[:30].tolist()) & set(np.argsort(-mi)[:30].tolist())
    )
    assert "L1N9" in summary["only_mi"].split()  # the planted |activation| unit
