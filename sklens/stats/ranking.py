"""The ranking rules: how a neuron's per-slot correlations become one score.

One function serves the observed scan (``Scan.scores``) and every permutation of the null
(``PermutationAccumulator.reduce``), so the null is always the null of the statistic that ranks.

* ``"max"`` (the paper's): ``score = max_k corr[..., k]``; neurons are ranked by ``|score|``. A
  neuron negatively correlated at every slot gets its least negative r, so strongly
  anti-correlated neurons can rank below weaker positive ones.
* ``"absmax"`` (symmetric): ``score = corr[..., k*]`` with ``k* = argmax_k |corr[..., k]|``,
  treating both signs alike (on an exact tie, the positive one).

A neuron whose correlation is NaN at every slot (it never varies) scores NaN.

``layer_and_unit`` turns an index into a flattened ``[layers, units]`` score (what ``topk`` of
``score.flatten()`` gives) back into its row and unit, for every table of top units.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.vocabulary import REDUCE_RULES as RULES
from sklens.vocabulary import Reduce


def check_rule(reduce: str) -> None:
    """Refuse an unknown ranking rule, naming the known ones."""
    if reduce not in RULES:
        raise ValueError(f"reduce must be 'max' (the paper's rule) or 'absmax', got {reduce!r}")


def slot_scores(
    corr: Float[Tensor, "*neurons slot"], reduce: Reduce = "max"
) -> tuple[Float[Tensor, "*neurons"], Int[Tensor, "*neurons"]]:
    """Each neuron's score under ``reduce`` and the slot it comes from (last axis = slot)."""
    check_rule(reduce)
    hi, hi_slot = corr.nan_to_num(nan=-torch.inf).max(-1)
    if reduce == "max":
        score, slot = hi, hi_slot
    else:
        lo, lo_slot = corr.nan_to_num(nan=torch.inf).min(-1)
        score = from_extremes(hi, lo, reduce)
        slot = torch.where(score == hi, hi_slot, lo_slot)
    return torch.where(torch.isinf(score), torch.nan, score), slot


def from_extremes(
    hi: Float[Tensor, "*neurons"], lo: Float[Tensor, "*neurons"], reduce: Reduce
) -> Float[Tensor, "*neurons"]:
    """A rule's score from a neuron's largest (``hi``) and smallest (``lo``) r over its slots:
    ``"max"`` is ``hi``; ``"absmax"`` the one of larger magnitude (a tie goes to ``hi``)."""
    return hi if reduce == "max" else torch.where(lo + hi < 0, lo, hi)  # |lo| > |hi|, lo ≤ hi


def layer_and_unit(
    flat: Int[Tensor, " k"], n_units: int
) -> tuple[Int[Tensor, " k"], Int[Tensor, " k"]]:
    """The row (the position among the scanned layers) and the unit of each index ``flat`` into a
    flattened ``[layers, n_units]`` tensor."""
    return flat // n_units, flat % n_units
