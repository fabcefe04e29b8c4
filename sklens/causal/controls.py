"""The control sets of a causal check: random units drawn like the selected ones, and a positive
control known to matter.

Random sets (``random_sets``) hold the same number of units per layer as the selected set, never a
selected unit, drawn with one seeded generator (``RandomUnits``, also used by
``sklens.counterfactual``). Two matchings make them comparable to the selection: in activation
scale (each selected unit replaced by one of the ``pool`` unselected units of its layer closest in
mean |activation|) and in a stratum (each replaced by a unit of the same stratum, e.g. the same
decile of |score|: ``score_strata``), since a selection by |r| favours units of a particular
scale and score. The positive control (``positive_set``) is a set whose ablation is expected to
move the model (every unit of the selected layers, or the attribution's top-K), so a causal check
shows that it can detect an effect where there is one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.models.protocol import Model
from sklens.scanning.result import Scan
from sklens.units.neuron_set import NeuronLike, NeuronSet
from sklens.vocabulary import Reduce


class RandomUnits:
    """Units drawn at random, with one seeded generator, among the units of a site's layers that
    are not selected: the controls of a causal check (``random_sets``) and of a counterfactual
    test (``sklens.causal.counterfactual``), so both draw them the same way."""

    def __init__(self, selected: NeuronSet, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        taken = {L: set(ids.tolist()) for L, ids in selected.by_layer().items()}
        self.others = {  # each selected layer's unselected units, ascending
            L: torch.tensor(
                [i for i in range(selected.site.size) if i not in ids], dtype=torch.long
            )
            for L, ids in taken.items()
        }

    def draw(self, layer: int, k: int) -> Int[Tensor, " drawn"]:
        """``k`` distinct unselected units of ``layer`` (all of them when it has fewer)."""
        others = self.others[layer]
        return others[torch.randperm(len(others), generator=self.gen)[:k]]

    def matched(
        self,
        layer: int,
        ids: Int[Tensor, " k"],
        scale: Float[Tensor, " units"] | None,
        pool: int,
        strata: Int[Tensor, " units"] | None = None,
    ) -> Int[Tensor, " k"]:
        """One distinct unselected unit of ``layer`` per unit of ``ids``: with ``strata``, among
        the units left of the same stratum (any stratum where none is left); with ``scale``, one
        of the ``pool`` of those closest to it in ``scale`` (else any of them)."""
        others = self.others[layer].tolist()
        chosen: list[int] = []
        for i in ids.tolist():
            free = torch.tensor([o for o in others if o not in chosen], dtype=torch.long)
            if strata is not None and bool((strata[free] == strata[i]).any()):
                free = free[strata[free] == strata[i]]
            if scale is not None:
                free = free[(scale[free] - scale[i]).abs().argsort()[:pool]]
            chosen.append(int(free[torch.randint(len(free), (1,), generator=self.gen)]))
        return torch.tensor(chosen, dtype=torch.long)


def random_sets(
    model: Model,
    neurons: NeuronLike,
    n_random: int,
    *,
    seed: int = 0,
    scale: Mapping[int, Tensor] | None = None,
    pool: int = 20,
    strata: Mapping[int, Tensor] | None = None,
) -> list[dict[int, Tensor]]:
    """``n_random`` sets (``{layer: ids}``) of the same site with the same number of units per
    layer as ``neurons``, never containing a selected unit. With ``scale`` (per-unit mean
    |activation|), each selected unit is replaced by one of the ``pool`` units of its layer
    closest in scale; with ``strata`` (an integer label per unit and layer, e.g.
    ``score_strata``), by a unit of its own stratum.

    Args:
        model: the model the units belong to.
        neurons: the selected units (a ``top_k`` table, pairs or a mask).
        n_random: how many random sets.
        seed: the draw's seed.
        scale: per layer, each unit's mean |activation| (``neuron_stats``), or None.
        pool: the number of nearest-in-scale units each selected unit is replaced from.
        strata: per layer, an integer stratum per unit, or None.

    Returns:
        ``n_random`` dicts from layer to unit ids."""
    selected = NeuronSet.of(neurons, model)
    index = selected.by_layer()
    units = RandomUnits(selected, seed)
    for L, ids in index.items():
        if n_random and len(units.others[L]) < len(ids):
            raise ValueError(f"layer {L} has too few unselected neurons for a random control")
    out = []
    for _ in range(n_random):
        drawn = {}
        for L, ids in index.items():
            if scale is None and strata is None:
                drawn[L] = units.draw(L, len(ids)).sort().values
            else:
                size = scale[L] if scale is not None else None
                label = strata[L] if strata is not None else None
                drawn[L] = units.matched(L, ids, size, pool, label).sort().values
        out.append(drawn)
    return out


def score_strata(scan: Scan, reduce: Reduce = "max", n: int = 10) -> dict[int, Tensor]:
    """Each unit's decile (``n`` quantile bins) of |score| over every unit of the scan, by model
    layer: the strata that random controls are drawn from, so they match the selection in score
    as well as in layer (and scale)."""
    score = scan.scores(reduce)[0].abs()
    edges = torch.quantile(score.flatten().double(), torch.linspace(0, 1, n + 1)[1:-1].double())
    bins = torch.bucketize(score.double(), edges)
    return {layer: bins[i] for i, layer in enumerate(scan.settings.layers)}


def positive_set(
    selected: NeuronSet, positive: NeuronLike | str, model: Model | None = None
) -> NeuronSet:
    """The positive control: ``"layers"`` is every unit of the selected set's layers (at the
    same site); anything else is parsed as a unit set (e.g. an attribution's ``top_k`` table)."""
    if isinstance(positive, str):
        if positive != "layers":
            raise ValueError(
                f"positive={positive!r}: use 'layers' (every unit of the selected layers) or a "
                "unit set such as an attribution's top_k table"
            )
        size = selected.site.size
        every = {L: torch.arange(size) for L in selected.layers}
        return NeuronSet.of(every, site=selected.site)
    return NeuronSet.of(positive, model, site=selected.site)
