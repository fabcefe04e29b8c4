"""Association measures beyond Pearson, for selected neurons' activations and a metric.

All take ``acts [n_examples, n_neurons]`` and return one value per neuron:

* ``spearman`` — Pearson on average ranks (robust to monotone nonlinearity and outliers);
* ``auroc`` — probability a positive example out-activates a negative one (binary metric);
* ``cohens_d`` — standardised mean difference between the two classes (binary metric);
* ``eta_squared`` — share of activation variance explained by a multi-group label;
* ``kruskal_wallis`` — H statistic and its chi-square p-value (multi-group, rank-based);
* ``partial_pearson`` — Pearson after regressing covariates (e.g. digit count, length) out of both.

Each statistic is written once, in a batched form that puts the examples on the last axis and
takes any leading shape (``batched_pearson``, ``batched_spearman``, ``batched_auroc``,
``batched_eta_squared``, on ``average_ranks``): the functions above call it on one sample, and
``sklens.stats.rank_tests`` on it, on a stack of bootstrap resamples and for its tests.

``sklens.confirm.held_out`` computes them for a ``top_k`` table on held-out examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor

from sklens.vocabulary import MEASURES


def _ranks_and_group_sizes(
    x: Float[Tensor, "... n"],
) -> tuple[Float[Tensor, "... n"], Float[Tensor, "... n"]]:
    """Average ranks along the last axis and the size of each value's group of ties (one sort
    serves both: how many values are below each value, and how many are at most it)."""
    x = x.double().contiguous()
    ordered = x.sort(-1).values
    below = torch.searchsorted(ordered, x, right=False)
    through = torch.searchsorted(ordered, x, right=True)
    return (below + through + 1).double() / 2, (through - below).double()


def average_ranks(x: Float[Tensor, "... n"]) -> Float[Tensor, "... n"]:
    """1-based ranks along the last axis; tied values share the mean of their ranks (any leading
    shape, so a whole stack of bootstrap resamples is ranked in one call)."""
    return _ranks_and_group_sizes(x)[0]


def ranks_and_ties(
    acts: Float[Tensor, "n units"],
) -> tuple[Float[Tensor, "units n"], Float[Tensor, " units"]]:
    """Each unit's average ranks and tie term, which ``rank_tests.mann_whitney`` may take
    precomputed (many properties tested against the same activations rank them once)."""
    ranks, t = _ranks_and_group_sizes(acts.T)
    # each of a group's t members adds t² − 1: Σ t(t² − 1) = Σ(t³ − t) over the groups
    return ranks, (t * t - 1).sum(-1)


def batched_pearson(
    a: Float[Tensor, "*batch units n"], v: Float[Tensor, "*batch n"]
) -> Float[Tensor, "*batch units"]:
    """Pearson's r of each row of ``a`` with ``v`` along the last axis: the one correlation of
    sklens's measures (Spearman's ρ is this on ranks). NaN for a constant row."""
    a = a - a.mean(-1, keepdim=True)
    v = v - v.mean(-1, keepdim=True)
    return torch.einsum("...un,...n->...u", a, v) / (a.norm(dim=-1) * v.norm(dim=-1, keepdim=True))


def batched_spearman(
    a: Float[Tensor, "*batch units n"], v: Float[Tensor, "*batch n"]
) -> Float[Tensor, "*batch units"]:
    """Spearman's ρ of each row of ``a`` with ``v``: Pearson's r of their average ranks."""
    return batched_pearson(average_ranks(a), average_ranks(v))


def batched_auroc(
    ranks: Float[Tensor, "*batch units n"], positive: Shaped[Tensor, "*batch n"]
) -> Float[Tensor, "*batch units"]:
    """AUROC of each row from its average ``ranks``: the Mann–Whitney U of the ``positive``
    examples, (Σ their ranks − n₁(n₁ + 1)/2), over n₁·n₀. NaN (0/0) where a class is empty."""
    positive = positive.double()
    n1 = positive.sum(-1, keepdim=True)
    n0 = positive.shape[-1] - n1
    u = torch.einsum("...un,...n->...u", ranks, positive) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def batched_eta_squared(
    acts: Float[Tensor, "*batch units n"], codes: Int[Tensor, "*batch n"], n_groups: int
) -> Float[Tensor, "*batch units"]:
    """η² of each row for the group ``codes`` (``0 .. n_groups − 1``): the between-group sum of
    squares Σ_g n_g (mean_g − mean)² over the total one. A group with no example adds nothing."""
    onehot = torch.nn.functional.one_hot(codes, n_groups).to(acts.dtype)  # [*batch, n, groups]
    counts = onehot.sum(-2)[..., None, :]  # [*batch, 1, groups]
    group_means = torch.einsum("...un,...ng->...ug", acts, onehot) / counts.clamp_min(1)
    mean = acts.mean(-1, keepdim=True)
    between = (counts * (group_means - mean).pow(2)).sum(-1)
    return between / (acts - mean).pow(2).sum(-1)


def pearson(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    return batched_pearson(acts.double().T, metric.double())


def spearman(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    return batched_spearman(acts.double().T, metric.double())


def _binary(metric: Tensor) -> Tensor:
    values = torch.unique(metric)
    if len(values) != 2:
        raise ValueError(f"this measure needs a binary metric, got {len(values)} distinct values")
    return metric == values.max()


def auroc(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    return batched_auroc(average_ranks(acts.T), _binary(metric))


def cohens_d(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    positive = _binary(metric)
    a1, a0 = acts.double()[positive], acts.double()[~positive]
    n1, n0 = len(a1), len(a0)
    if min(n1, n0) < 2:  # a variance needs two examples per class
        return torch.full((acts.shape[1],), torch.nan, dtype=torch.float64)
    pooled = (((n1 - 1) * a1.var(0) + (n0 - 1) * a0.var(0)) / (n1 + n0 - 2)).sqrt()
    return (a1.mean(0) - a0.mean(0)) / pooled


def _codes(groups: Sequence[Any]) -> tuple[Tensor, int]:
    """Each example's group as a code ``0 .. n_groups − 1``, and ``n_groups``."""
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    if len(labels) < 2:
        raise ValueError("a group measure needs at least two groups")
    return torch.tensor([labels[g] for g in groups]), len(labels)


def eta_squared(acts: Float[Tensor, "n k"], groups: Sequence[Any]) -> Float[Tensor, " k"]:
    return batched_eta_squared(acts.double().T, *_codes(groups))


def kruskal_wallis(
    acts: Float[Tensor, "n k"], groups: Sequence[Any]
) -> tuple[Float[Tensor, " k"], Float[Tensor, " k"]]:
    """H statistic (tie-corrected) and its chi-square p-value with ``groups − 1`` dof.

    The tie-corrected H is (n − 1)·η² of the average ranks: the ranks' between-group sum of
    squares over their total one, which ties shrink from (n³ − n)/12 by Σ(t³ − t)/12."""
    codes, n_groups = _codes(groups)
    h = (acts.shape[0] - 1) * batched_eta_squared(average_ranks(acts.T), codes, n_groups)
    dof = torch.tensor((n_groups - 1) / 2, dtype=torch.float64)
    return h, torch.special.gammaincc(dof, h / 2)


def partial_pearson(
    acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"], covariates: Float[Tensor, "n c"]
) -> Float[Tensor, " k"]:
    design = torch.cat([torch.ones(len(metric), 1, dtype=torch.float64), covariates.double()], 1)

    def residual(y: Tensor) -> Tensor:
        coef = torch.linalg.lstsq(design, y).solution
        return y - design @ coef

    return pearson(residual(acts.double()), residual(metric.double()[:, None])[:, 0])


# the measures of one neuron's activation against the metric, by the name ``measures=`` takes
PAIRED = {"pearson": pearson, "spearman": spearman, "auroc": auroc, "cohens_d": cohens_d}


def check_measures(measures: Sequence[str]) -> None:
    """Refuse a measure name sklens does not know, naming the known ones."""
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {MEASURES}")
