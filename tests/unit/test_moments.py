"""Streaming moments: batch merges equal a direct computation, also with large offsets."""

from __future__ import annotations

import numpy as np
import torch

from sklens.stats.moments import Moments


def _fold(moments: Moments, acts: torch.Tensor, m: torch.Tensor) -> None:
    for j in range(acts.shape[1]):
        moments.fold_layer(j, acts[:, j], m)
    moments.fold_metric(m)


def _direct(acts: np.ndarray, m: np.ndarray) -> np.ndarray:
    a = acts.transpose(1, 3, 2, 0).reshape(-1, acts.shape[0])  # (L*d*k, N) as [L, d, k]
    r = np.array([np.corrcoef(row, m)[0, 1] for row in a])
    return r.reshape(acts.shape[1], acts.shape[3], acts.shape[2])


def test_batched_merge_equals_direct_and_shards_merge():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(37, 2, 3, 5))  # (N, layers, slots, d_mlp)
    m = acts[:, 1, 2, 4] * 0.5 + rng.normal(size=37)
    whole = Moments.zeros(2, 5, 3, "cpu")
    for start in range(0, 37, 6):
        _fold(
            whole, torch.from_numpy(acts[start : start + 6]), torch.from_numpy(m[start : start + 6])
        )
    np.testing.assert_allclose(whole.corr().numpy(), _direct(acts, m), atol=1e-12)
    a, b = Moments.zeros(2, 5, 3, "cpu"), Moments.zeros(2, 5, 3, "cpu")
    _fold(a, torch.from_numpy(acts[:20]), torch.from_numpy(m[:20]))
    _fold(b, torch.from_numpy(acts[20:]), torch.from_numpy(m[20:]))
    merged = a.merge(b)
    assert merged.n == 37
    np.testing.assert_allclose(merged.corr().numpy(), whole.corr().numpy(), atol=1e-12)


def test_large_offsets_stay_accurate_where_textbook_sums_fail():
    rng = np.random.default_rng(1)
    n = 400
    signal = rng.normal(size=n)
    m = signal + rng.normal(size=n)
    offset = 1e8  # huge activation offset (as the position-0 spikes of SmolLM2, and worse)
    acts = (offset + 1e-2 * signal)[:, None, None, None] * np.ones((1, 1, 1, 1))
    moments = Moments.zeros(1, 1, 1, "cpu")
    for start in range(0, n, 8):
        _fold(
            moments,
            torch.from_numpy(acts[start : start + 8]),
            torch.from_numpy(m[start : start + 8]),
        )
    reference = np.corrcoef(signal, m)[0, 1]
    assert abs(moments.corr().item() - reference) < 1e-4
    # the textbook one-pass formula on the same data is far off
    s_a, s_aa, s_am = acts.sum(), (acts**2).sum(), (acts.squeeze() * m).sum()
    cov = s_am / n - s_a / n * m.mean()
    var = s_aa / n - (s_a / n) ** 2
    naive = cov / np.sqrt(abs(var) * m.var()) if var != 0 else np.nan
    assert not abs(naive - reference) < 1e-4


def test_dead_neuron_is_nan_not_a_number():
    moments = Moments.zeros(1, 2, 1, "cpu")
    acts = torch.zeros(6, 1, 1, 2, dtype=torch.float64)
    acts[:, 0, 0, 1] = torch.arange(6.0)
    _fold(moments, acts, torch.arange(6.0, dtype=torch.float64))
    r = moments.corr()
    assert torch.isnan(r[0, 0, 0]) and r[0, 1, 0] == 1.0
