"""Scans of activations computed elsewhere: the same statistics as ``sklens.scan``, from arrays.

Use it when the activations already exist (another tool cached them, or a simulation made them):
the streaming moments, the within-group statistic and the permutation null are the ones
``sklens.scan`` folds inside its hooks, so results are directly comparable. It is also how the
calibration benchmark and the statistics tests drive sklens's own accumulators on planted data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from sklens import validate
from sklens.scanning.result import Scan
from sklens.scanning.scan import ScanAccumulator, check_varies_within
from sklens.scanning.scan_settings import ScanSettings
from sklens.stats.moments import group_codes
from sklens.units.sites import SiteLike, site_of


def scan_activations(
    acts: Float[Tensor, "n layers slots unit"],
    values: Float[Tensor, " n"],
    *,
    n_permutations: int = 0,
    groups: Sequence[object] | None = None,
    permutation_seed: int = 0,
    mi_bins: int = 0,
    site: SiteLike | None = None,
    chunk: int = 16,
) -> Scan:
    """Correlate activations ``[n, layers, slots, unit]`` with one metric value per example.

    Args:
        acts: activations of each example at each (layer, slot, unit), e.g. the soft-prompt
            slots of ``blocks.L.mlp.hook_post``.
        values: the metric, one number per example.
        n_permutations: B > 0 adds the max-statistic permutation null (``Scan.p_values``).
        groups: one group label per example: the statistic becomes the pooled within-group r and
            the permutations stay inside the groups (as ``scan(permutation_groups=...)``).
        permutation_seed: seed of the permutations.
        mi_bins: A > 0 adds binned mutual information with ``A`` equal-frequency bins per unit,
            fixed by all ``n`` examples (``Scan.mutual_info``; ``sklens.stats.mutual_info``).
        site: what the units are (``sklens.sites``; default MLP neurons): ids and labels carry it.
        chunk: examples folded at a time, and the permutation null's block (the result does
            not depend on it beyond rounding).
    """
    n, n_layers, k, d = acts.shape
    values = torch.as_tensor(values, dtype=torch.float64)
    if len(values) != n:
        raise ValueError(f"{len(values)} metric values for {n} examples of activations")
    if groups is not None:
        check_varies_within(values, group_codes(list(groups)), "values", "groups")
    validate.mi_bins(mi_bins, n)
    if mi_bins and groups is not None:
        raise ValueError("mutual information is marginal: use mi_bins without groups")
    accumulator = ScanAccumulator.zeros(
        n,
        (n_layers, d, k),
        # the bins are fixed by the first block: with mutual information it holds every example
        capacity=n if mi_bins else chunk,
        groups=groups,
        n_permutations=n_permutations,
        permutation_seed=permutation_seed,
        values=values,
        mi_bins=mi_bins,
    )
    for start in range(0, n, chunk):
        rows = list(range(start, min(n, start + chunk)))
        accumulator.fold({j: acts[rows, j] for j in range(n_layers)}, values[rows], rows)
    accumulator.take_held()
    settings = ScanSettings(
        n_layers=n_layers,
        n_units=d,
        site=site_of(site).name,
        layers=tuple(range(n_layers)),
        n_slots=k,
        metric="values",
        n_examples=n,
        n_permutations=n_permutations,
        statistic="pearson" if groups is None else "within-group pearson (groups)",
        permutation_seed=permutation_seed,
        positions="precomputed",
        mi_bins=mi_bins,
    )
    return Scan(
        accumulator.moments, values, settings, accumulator.null(),
        mutual_info=accumulator.mutual_info(values, list(range(n_layers))), site=site_of(site),
    )  # fmt: skip
