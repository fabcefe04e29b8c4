"""``sklens.sparsity``: its shares against numpy on the scan's own correlations, and planted units
that the max-statistic null finds (and none when nothing is planted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sklens


def _acts(planted: int, units: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, layers, slots, unit] noise; the first ``planted`` units of layer 1, slot 0 follow
    the metric."""
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(60, 2, 3, units, generator=g, dtype=torch.float64)
    values = torch.randn(60, generator=g, dtype=torch.float64)
    acts[:, 1, 0, :planted] += 3 * values[:, None]
    return acts, values


def test_shares_equal_numpy_on_the_scans_correlations():
    acts, values = _acts(planted=0)
    scan = sklens.scan_activations(acts, values)
    out = sklens.sparsity(scan, k=5, thresholds=(0.2, 0.9))
    # independent: Pearson r per (layer, slot, unit) with numpy, the signed max over slots
    a = acts.numpy().reshape(60, -1)
    r = np.array([np.corrcoef(a[:, j], values.numpy())[0, 1] for j in range(a.shape[1])])
    score = np.abs(r.reshape(2, 3, 50).max(axis=1)).ravel()
    assert out["n_units"] == 100
    assert out["top_k_threshold"] == pytest.approx(np.sort(score)[-5], abs=1e-12)
    assert out["median_abs_score"] == pytest.approx(np.median(score), abs=1e-12)
    assert out["frac_above"] == {0.2: pytest.approx((score >= 0.2).mean()), 0.9: 0.0}
    assert "null_max_95" not in out  # no null, no claim about it


def test_the_null_finds_planted_units_and_calls_a_few_sparse():
    planted = sklens.sparsity(sklens.scan_activations(*_acts(planted=3), n_permutations=199), k=10)
    assert planted["n_fwer_05"] == 3 and planted["frac_fwer_05"] == 0.03
    assert planted["sparse"] is False  # 3% of 100 units is not fewer than 1%
    one = sklens.sparsity(sklens.scan_activations(*_acts(1, units=150), n_permutations=199))
    assert one["n_fwer_05"] == 1 and one["sparse"] is True  # 1 of 300
    nothing = sklens.sparsity(sklens.scan_activations(*_acts(planted=0), n_permutations=199))
    assert nothing["n_fwer_05"] == 0 and nothing["sparse"] is False
    assert nothing["null_max_95"] > nothing["top_k_threshold"] > nothing["median_abs_score"]


def test_bad_k_is_refused_before_work():
    scan = sklens.scan_activations(*_acts(planted=0))
    with pytest.raises(ValueError, match="k=500 is more than the 100 units"):
        sklens.sparsity(scan, k=500)
