"""Association measures beyond Pearson, for selected neurons' activations and a metric.

All take ``acts [n_examples, n_neurons]`` and return one value per neuron:

* ``spearman`` — Pearson on average ranks (robust to monotone nonlinearity and outliers);
* ``auroc`` — probability a positive example out-activates a negative one (binary metric);
* ``cohens_d`` — standardised mean difference between the two classes (binary metric);
* ``eta_squared`` — share of activation variance explained by a multi-group label;
* ``kruskal_wallis`` — H statistic and its chi-square p-value (multi-group, rank-based);
* ``partial_pearson`` — Pearson after regressing covariates (e.g. digit count, length) out of both.

``sklens.confirm.held_out`` computes them for a ``top_k`` table on held-out examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sklens.vocabulary import MEASURES


def _ranks(x: Tensor) -> Tensor:
    """Average ranks along dim 0 (ties share their mean rank), 1-based."""
    order = x.argsort(0)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks.scatter_(
        0,
        order,
        torch.arange(1, x.shape[0] + 1, dtype=torch.float64)[:, None].expand_as(x).contiguous(),
    )
    out = ranks.clone()
    for j in range(x.shape[1]):  # average over ties
        values, inverse = torch.unique(x[:, j], return_inverse=True)
        if len(values) < x.shape[0]:
            sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks[:, j])
            counts = torch.bincount(inverse, minlength=len(values)).double()
            out[:, j] = (sums / counts)[inverse]
    return out


def pearson(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    a = acts.double() - acts.double().mean(0)
    m = metric.double() - metric.double().mean()
    return (a * m[:, None]).sum(0) / (a.norm(dim=0) * m.norm())


def spearman(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    return pearson(_ranks(acts.double()), _ranks(metric.double()[:, None])[:, 0])


def _binary(metric: Tensor) -> Tensor:
    values = torch.unique(metric)
    if len(values) != 2:
        raise ValueError(f"this measure needs a binary metric, got {len(values)} distinct values")
    return metric == values.max()


def auroc(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    positive = _binary(metric)
    ranks = _ranks(acts.double())
    n1, n0 = int(positive.sum()), int((~positive).sum())
    return (ranks[positive].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def cohens_d(acts: Float[Tensor, "n k"], metric: Float[Tensor, " n"]) -> Float[Tensor, " k"]:
    positive = _binary(metric)
    a1, a0 = acts.double()[positive], acts.double()[~positive]
    n1, n0 = len(a1), len(a0)
    if min(n1, n0) < 2:  # a variance needs two examples per class
        return torch.full((acts.shape[1],), torch.nan, dtype=torch.float64)
    pooled = (((n1 - 1) * a1.var(0) + (n0 - 1) * a0.var(0)) / (n1 + n0 - 2)).sqrt()
    return (a1.mean(0) - a0.mean(0)) / pooled


def _codes(groups: Sequence[Any]) -> Tensor:
    labels = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    if len(labels) < 2:
        raise ValueError("a group measure needs at least two groups")
    return torch.tensor([labels[g] for g in groups])


def eta_squared(acts: Float[Tensor, "n k"], groups: Sequence[Any]) -> Float[Tensor, " k"]:
    codes = _codes(groups)
    a = acts.double()
    total = (a - a.mean(0)).pow(2).sum(0)
    between = sum(
        (codes == g).sum() * (a[codes == g].mean(0) - a.mean(0)).pow(2) for g in codes.unique()
    )
    return between / total


def kruskal_wallis(
    acts: Float[Tensor, "n k"], groups: Sequence[Any]
) -> tuple[Float[Tensor, " k"], Float[Tensor, " k"]]:
    """H statistic (tie-corrected) and its chi-square p-value with ``groups − 1`` dof."""
    codes = _codes(groups)
    ranks = _ranks(acts.double())
    n = ranks.shape[0]
    h = (
        sum(
            (codes == g).sum() * (ranks[codes == g].mean(0) - (n + 1) / 2).pow(2)
            for g in codes.unique()
        )
        * 12
        / (n * (n + 1))
    )
    counts = [
        torch.unique(acts[:, j], return_counts=True)[1].double() for j in range(acts.shape[1])
    ]
    ties = torch.stack([(c.pow(3) - c).sum() for c in counts])
    h = h / (1 - ties / (n**3 - n))
    dof = torch.tensor((len(codes.unique()) - 1) / 2, dtype=torch.float64)
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
