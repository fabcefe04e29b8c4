"""Rank tests with p-values and intervals, for many units at once: what ``sklens.explain`` needs
to say how strongly a held-out property explains a unit's activation, and whether that could be
chance.

* ``mann_whitney`` — AUROC of a binary property for every unit, with the two-sided
  Mann–Whitney p-value (normal approximation, tie-corrected, no continuity correction);
* ``spearman_test`` — Spearman's ρ with a p-value and an interval from Fisher's z with the
  variance 1.06 / (n − 3) (Fieller, Hartley & Pearson 1957);
* ``fisher_exact`` — the two-sided exact test of a 2×2 table (the p of every table with the same
  margins that is at most as likely), and ``log_odds`` with Woolf's interval (Haldane's +½);
* ``bootstrap_effects`` — percentile intervals of AUROC, ρ or η² from resampled rows, all units
  in one batched computation (``sklens.stats.bootstrap_ci`` does one statistic at a time; both
  read the interval off the resamples with ``inference.percentile_interval``).

The effects themselves, and the ranks (``average_ranks``, ``ranks_and_ties``), are
``sklens.stats.measures``'s batched statistics, imported here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sklens.stats.inference import percentile_interval
from sklens.stats.measures import (
    average_ranks,
    batched_auroc,
    batched_eta_squared,
    batched_spearman,
    ranks_and_ties,
)

_Z95 = 1.959963984540054


def _normal_two_sided(z: Tensor) -> Tensor:
    return torch.special.erfc(z.abs() / math.sqrt(2))


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
    auroc = batched_auroc(ranks, positive)
    pairs = n1 * n0  # U = AUROC · n₁n₀, whose mean under the null is n₁n₀ / 2
    variance = pairs / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (auroc - 0.5) * pairs / variance.clamp_min(1e-300).sqrt()
    p = torch.where(variance > 0, _normal_two_sided(z), torch.ones_like(z))
    return auroc, p


PerUnit = Float[Tensor, " units"]


def spearman_test(
    acts: Float[Tensor, "n units"], values: Float[Tensor, " n"]
) -> tuple[PerUnit, PerUnit, PerUnit, PerUnit]:
    """Spearman's ρ per unit, its two-sided p-value and 95% interval (Fisher z, variance
    1.06/(n−3)); p and interval NaN for n ≤ 3, ρ NaN for a constant column."""
    n = acts.shape[0]
    rho = batched_spearman(acts.T, values.double()).clamp(-1, 1)
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


def _effects_of_resamples(
    sample: Float[Tensor, "boot units n"], drawn: Tensor, kind: str, n_groups: int
) -> Float[Tensor, "boot units"]:
    """``kind``'s effect per resample and unit; ``drawn [boot, n]`` is the feature's rows. NaN or
    ±inf where a resample lost a class or a group's variance (dropped by the caller)."""
    if kind == "auroc":
        return batched_auroc(average_ranks(sample), drawn)
    if kind == "spearman":
        return batched_spearman(sample, drawn.double())
    return batched_eta_squared(sample, drawn.long(), n_groups)


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
    n_groups = int(feature.max()) + 1 if kind == "eta_squared" else 0
    parts = [
        _effects_of_resamples(acts[rows].transpose(1, 2), feature[rows], kind, n_groups)
        for rows in index.split(chunk)  # [boot, units, n] resampled activations
    ]
    values = torch.cat(parts).numpy()
    values[~np.isfinite(values)] = np.nan
    return percentile_interval(values)
