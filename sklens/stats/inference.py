"""Multiple comparisons and intervals: Benjamini–Hochberg / –Yekutieli q-values, Fisher-z and
bootstrap confidence intervals, and the rank p-value of a selected set among random sets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

QMethod = Literal["bh", "by"]  # Benjamini–Hochberg, Benjamini–Yekutieli


def q_values(p: Tensor | np.ndarray, method: QMethod = "bh") -> np.ndarray:
    """BH (independent or positively dependent tests) or BY (any dependence) adjusted p-values.

    NaNs are ignored and stay NaN; the result has the input's shape.
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    values = flat[ok]
    m = len(values)
    out = np.full_like(flat, np.nan)
    if m == 0:
        return out.reshape(p.shape)
    if method not in ("bh", "by"):
        raise ValueError(f"method must be 'bh' or 'by', got {method!r}")
    factor = 1.0 if method == "bh" else float(np.sum(1.0 / np.arange(1, m + 1)))
    order = np.argsort(values)
    ranked = values[order] * m * factor / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    result = np.empty(m)
    result[order] = adjusted
    out[ok] = result
    return out.reshape(p.shape)


def fisher_ci(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval for a Pearson r from Fisher's z transform (needs n > 3)."""
    if n <= 3 or math.isnan(r):
        return (math.nan, math.nan)
    z = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
    half = _normal_quantile(0.5 + level / 2) / math.sqrt(n - 3)
    return (math.tanh(z - half), math.tanh(z + half))


def _normal_quantile(p: float) -> float:
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling rows jointly.

    The bootstrap of one statistic at a time (held-out AUROC and Cohen's d, the causal changes,
    the demos); ``rank_tests.bootstrap_effects`` resamples many units' effects in one batch, and
    both read the interval off the resamples with ``percentile_interval``. ``seed`` may be a
    ``numpy`` Generator to draw many intervals from one stream. NaN if fewer than two rows, or
    fewer than ten resamples give a number.
    """
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    if n < 2:
        return (math.nan, math.nan)
    values = np.array(
        [statistic(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, (n_boot, n))],
        dtype=np.float64,
    )
    lo, hi = percentile_interval(values, level)
    return float(lo), float(hi)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of resampled statistics ``values [n_boot, ...]`` along axis 0, the
    rule of every bootstrap in sklens: NaN resamples (a statistic that gave no number) are left
    out, and an interval needs ten resamples that are not, else it is NaN."""
    enough = (~np.isnan(values)).sum(0) >= 10
    if not enough.any():  # no quantile to take (nor one of zero resamples to warn about)
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    alpha = (1 - level) / 2
    with np.errstate(all="ignore"):
        kept = np.where(enough, values, 0.0)
        lo = np.where(enough, np.nanquantile(kept, alpha, axis=0), np.nan)
        hi = np.where(enough, np.nanquantile(kept, 1 - alpha, axis=0), np.nan)
    return lo, hi


def rank_p(selected: float, randoms: Sequence[float] | np.ndarray) -> float:
    """Two-sided rank p-value of ``selected`` among ``randoms``, around the randoms' median.

    ``(1 + #{r: |r − med| ≥ |selected − med|}) / (1 + n)``: small when the selected value lies
    far out in either tail of the random values — including when random edits all move the
    metric one way and the selected edit moves it the other way or not at all (a comparison of
    absolute changes around zero would call that p ≈ 1). The smallest value is ``1/(n+1)``.
    """
    randoms = np.asarray(randoms, dtype=np.float64)
    randoms = randoms[~np.isnan(randoms)]
    if math.isnan(selected) or len(randoms) == 0:
        return math.nan
    med = float(np.median(randoms))
    extreme = int(np.sum(np.abs(randoms - med) >= abs(selected - med) - 1e-15))
    return (1 + extreme) / (1 + len(randoms))
