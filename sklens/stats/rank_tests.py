"""Rank tests with p-values and intervals, for many units at once: what ``sklens.explain`` needs
to say how strongly a held-out property explains a unit's activation, and whether that could be
chance.

* ``average_ranks`` — ranks along the last axis, ties sharing their mean rank (any leading shape,
  so a whole stack of bootstrap resamples is ranked in one call);
* ``mann_whitney`` — AUROC of a binary property for every unit, with the two-sided
  Mann–Whitney p-value (normal approximation, tie-corrected, no continuity correction);
* ``spearman_test`` — Spearman's ρ with a p-value and an interval from Fisher's z with the
  variance 1.06 / (n − 3) (Fieller, Hartley & Pearson 1957);
* ``fisher_exact`` — the two-sided exact test of a 2×2 table (the p of every table with the same
  margins that is at most as likely), and ``log_odds`` with Woolf's interval (Haldane's +½);
* ``bootstrap_effects`` — percentile intervals of AUROC, ρ or η² from resampled rows, all units
  in one batched computation (``sklens.stats.bootstrap_ci`` does one statistic at a time).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

_Z95 = 1.959963984540054


def _tie_bounds(x: Float[Tensor, "... n"]) -> tuple[Tensor, Tensor]:
    """For each value along the last axis: how many values are below it, and how many are at
    most it (one sort serves both the ranks and the tie term)."""
    x = x.double().contiguous()
    ordered = x.sort(-1).values
    return torch.searchsorted(ordered, x, right=False), torch.searchsorted(ordered, x, right=True)


def average_ranks(x: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """1-based ranks along the last axis; tied values share the mean of their ranks."""
    below, through = _tie_bounds(x)
    return (below + through + 1).double() / 2


def _normal_two_sided(z: Tensor) -> Tensor:
    return torch.special.erfc(z.abs() / math.sqrt(2))


def ranks_and_ties(
    acts: Float[Tensor, "n units"],
) -> tuple[Float[Tensor, "units n"], Float[Tensor, " units"]]:
    """Each unit's average ranks and tie term, which ``mann_whitney`` may take precomputed (many
    properties tested against the same activations rank them once)."""
    below, through = _tie_bounds(acts.T)
    t = (through - below).double()  # the size of each value's group of ties
    # each of a group's t members adds t² − 1: Σ t(t² − 1) = Σ(t³ − t) over the groups
    return (below + through + 1).double() / 2, (t * t - 1).sum(-1)


def mann_whitney(
    acts: Float[Tensor, "n units"],
    positive: Bool[Tensor, " n"],
    ranked: tuple[Tensor, Tensor] | None = None,
) -> tuple[Float[Tensor, " units"], Float[Tensor, " units"]]:
    """AUROC (P(a positive example out-activates a negative one), ties counting ½) and the
    two-sided Mann–Whitney p-value, per unit. NaN when a class is empty; p = 1 when every
    activation is tied. ``ranked``: ``ranks_and_ties(acts)``, if already computed."""
    positive = positive.bool()
    n = len(positive)
    n1 = int(positive.sum())
    n0 = n - n1
    units = acts.shape[1]
    if n1 == 0 or n0 == 0:
        nan = torch.full((units,), torch.nan, dtype=torch.float64)
        return nan, nan.clone()
    ranks, ties = ranked if ranked is not None else ranks_and_ties(acts)  # [units, n], [units]
    u = ranks[:, positive].sum(-1) - n1 * (n1 + 1) / 2
    auroc = u / (n1 * n0)
    variance = n1 * n0 / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (u - n1 * n0 / 2) / variance.clamp_min(1e-300).sqrt()
    p = torch.where(variance > 0, _normal_two_sided(z), torch.ones_like(z))
    return auroc, p


PerUnit = Float[Tensor, " units"]


def spearman_test(
    acts: Float[Tensor, "n units"], values: Float[Tensor, " n"]
) -> tuple[PerUnit, PerUnit, PerUnit, PerUnit]:
    """Spearman's ρ per unit, its two-sided p-value and 95% interval (Fisher z, variance
    1.06/(n−3)); p and interval NaN for n ≤ 3, ρ NaN for a constant column."""
    n = acts.shape[0]
    a = average_ranks(acts.T)
    v = average_ranks(values[None])
    a = a - a.mean(-1, keepdim=True)
    v = v - v.mean(-1, keepdim=True)
    rho = ((a * v).sum(-1) / (a.norm(dim=-1) * v.norm(dim=-1))).clamp(-1, 1)
    if n <= 3:
        nan = torch.full_like(rho, torch.nan)
        return rho, nan, nan.clone(), nan.clone()
    se = math.sqrt(1.06 / (n - 3))
    z = torch.atanh(rho.clamp(-1 + 1e-12, 1 - 1e-12))
    return rho, _normal_two_sided(z / se), torch.tanh(z - _Z95 * se), torch.tanh(z + _Z95 * se)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p of Fisher's exact test on ``[[a, b], [c, d]]``: the total probability, under
    the hypergeometric law of the fixed margins, of every table at most as likely as this one."""
    row1, col1, n = a + b, a + c, a + b + c + d

    def log_p(x: int) -> float:
        return (
            math.lgamma(row1 + 1)
            - math.lgamma(x + 1)
            - math.lgamma(row1 - x + 1)
            + math.lgamma(n - row1 + 1)
            - math.lgamma(col1 - x + 1)
            - math.lgamma(n - row1 - col1 + x + 1)
            - math.lgamma(n + 1)
            + math.lgamma(col1 + 1)
            + math.lgamma(n - col1 + 1)
        )

    support = range(max(0, row1 + col1 - n), min(row1, col1) + 1)
    observed = log_p(a)
    logs = np.array([log_p(x) for x in support])
    # the relative tolerance scipy uses, so tables as likely as this one within rounding count
    kept = logs[logs <= observed + 1e-7 * max(1.0, abs(observed))]
    return float(min(1.0, np.exp(kept).sum()))


def log_odds(a: int, b: int, c: int, d: int) -> tuple[float, float, float]:
    """Log odds ratio of ``[[a, b], [c, d]]`` with ½ added to every cell (so empty cells give a
    finite number) and Woolf's 95% interval."""
    cells = np.array([a, b, c, d], dtype=np.float64) + 0.5
    value = float(np.log(cells[0] * cells[3] / (cells[1] * cells[2])))
    se = float(np.sqrt((1 / cells).sum()))
    return value, value - _Z95 * se, value + _Z95 * se


def _auroc_of_resamples(ranks: Tensor, positive: Tensor) -> Tensor:
    """AUROC per resample and unit from ``ranks [boot, units, n]`` and ``positive [boot, n]``."""
    n1 = positive.sum(-1, keepdim=True)
    n0 = positive.shape[-1] - n1
    u = torch.einsum("bun,bn->bu", ranks, positive) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)  # NaN (0/0) or ±inf where a resample lost a class; dropped below


def _spearman_of_resamples(ranks: Tensor, values: Tensor) -> Tensor:
    v = average_ranks(values)  # [boot, n]
    a = ranks - ranks.mean(-1, keepdim=True)
    v = v - v.mean(-1, keepdim=True)
    return torch.einsum("bun,bn->bu", a, v) / (a.norm(dim=-1) * v.norm(dim=-1, keepdim=True))


def _eta_squared_of_resamples(acts: Tensor, codes: Tensor, n_groups: int) -> Tensor:
    """η² per resample and unit from ``acts [boot, units, n]`` and group ``codes [boot, n]``."""
    onehot = torch.nn.functional.one_hot(codes, n_groups).double()  # [boot, n, groups]
    counts = onehot.sum(1)  # [boot, groups]
    sums = torch.einsum("bun,bng->bug", acts, onehot)
    mean = acts.mean(-1, keepdim=True)
    between = (sums.pow(2) / counts[:, None].clamp_min(1)).sum(-1) - acts.shape[-1] * mean[
        ..., 0
    ].pow(2)
    total = (acts - mean).pow(2).sum(-1)
    return between / total


def bootstrap_effects(
    acts: Float[Tensor, "n units"],
    feature: Tensor,
    kind: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    chunk: int = 250,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95% intervals of every unit's effect over ``n_boot`` row resamples.

    ``kind`` is ``"auroc"`` (``feature`` bool), ``"spearman"`` (numeric) or ``"eta_squared"``
    (integer group codes). A resample that loses a class or a group's variance gives no number;
    an interval needs ten resamples that do, else it is NaN.
    """
    if kind not in ("auroc", "spearman", "eta_squared"):
        raise ValueError(f"kind must be auroc, spearman or eta_squared, got {kind!r}")
    n, units = acts.shape
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (n_boot, n), generator=gen)
    acts = acts.double()
    parts = []
    for rows in index.split(chunk):
        sample = acts[rows].transpose(1, 2)  # [boot, units, n]
        drawn = feature[rows]
        if kind == "auroc":
            parts.append(_auroc_of_resamples(average_ranks(sample), drawn.double()))
        elif kind == "spearman":
            parts.append(_spearman_of_resamples(average_ranks(sample), drawn.double()))
        else:
            parts.append(_eta_squared_of_resamples(sample, drawn.long(), int(feature.max()) + 1))
    values = torch.cat(parts).numpy()
    values[~np.isfinite(values)] = np.nan
    enough = (~np.isnan(values)).sum(0) >= 10
    with np.errstate(all="ignore"):
        lo = np.where(enough, np.nanquantile(np.where(enough, values, 0.0), 0.025, axis=0), np.nan)
        hi = np.where(enough, np.nanquantile(np.where(enough, values, 0.0), 0.975, axis=0), np.nan)
    return lo, hi
