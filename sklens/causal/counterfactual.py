"""Counterfactual tests: do selected units, and the model's behaviour, move when one property of
the input is flipped and everything else is kept?

``explain`` says which property a unit's activation tracks across examples; a property can
track because it co-occurs with another. ``counterfactual`` takes pairs that differ only in the
property (``sklens.edits`` builds them for the paper's heuristics, or any function of one
example) and measures, per pair, the change of each unit's activation at its slot and of the
model's loss, metric and multiple-choice pick. A unit that reads the property moves; one that
reads a correlate does not.

Per unit: the mean paired change with a bootstrap 95% interval, the change in standard deviations
of the unit's activation on the originals (``d_std``, comparable across units), and a two-sided
paired sign-flip permutation p-value (exact when the pairs are few enough to enumerate every sign
pattern), with Benjamini–Hochberg q over the units. With ``n_random`` > 0, as many random units
of the same layer at the same slot are read in the same pass; ``p_vs_random`` is the share of
them that move at least as much (|d_std|), so a change every unit shows is not mistaken for one
the unit has.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from sklens.causal.check import evaluate
from sklens.causal.controls import RandomUnits
from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.activations import at_selected_slot, require_slots, slot_activations
from sklens.scanning.metrics import MetricLike
from sklens.stats import bootstrap_ci
from sklens.stats.inference import q_values
from sklens.units.neuron_set import NeuronLike, NeuronSet
from sklens.units.sites import SiteLike, unit_slot_label

# evaluate's per-example columns whose paired change is reported, by the name reported
BEHAVIOUR = {
    "loss": "loss",
    "metric": "metric",
    "accuracy": "correct",
    "accuracy_per_token": "correct_per_token",
}

MIN_PAIRS = 5  # fewer pairs give no sign-flip p below 0.0625 and no useful interval


@dataclass
class Counterfactual:
    """``units``: one row per unit (``label``, ``layer``, ``unit``, ``slot``, its changes);
    ``behaviour``: one row per behaviour measure (loss, metric, accuracies, and
    ``choice_changed``, the share of pairs whose pick differs); ``per_pair``: each pair's
    activations before and after, by unit label."""

    units: pd.DataFrame
    behaviour: pd.DataFrame
    per_pair: pd.DataFrame


def sign_flip_p(
    changes: Float[Tensor, "n k"], n_permutations: int = 10_000, seed: int = 0
) -> Float[Tensor, " k"]:
    """Two-sided paired permutation p-value of the mean change of each column: the share of
    sign patterns whose |mean| reaches the observed one. Exact (every pattern) when
    ``2**n ≤ n_permutations``; otherwise Monte Carlo, ``(1 + hits) / (1 + n_permutations)``."""
    changes = changes.double()
    n = changes.shape[0]
    observed = changes.mean(0).abs()
    if 2**n <= n_permutations:
        signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=n)), dtype=torch.float64)
        return ((signs @ changes / n).abs() >= observed - 1e-12).double().mean(0)
    gen = torch.Generator().manual_seed(seed)
    hits = torch.zeros(changes.shape[1], dtype=torch.float64)
    for chunk in torch.arange(n_permutations).split(2000):
        signs = torch.randint(0, 2, (len(chunk), n), generator=gen).double() * 2 - 1
        hits += ((signs @ changes / n).abs() >= observed - 1e-12).sum(0)
    return (1 + hits) / (1 + n_permutations)


def _random_units(
    neurons: pd.DataFrame, selected: NeuronSet, n_random: int, seed: int
) -> pd.DataFrame:
    """``n_random`` distinct units per row (``of``), of its layer at its slot, none of them a
    selected unit (``RandomUnits``, as a causal check draws them)."""
    units = RandomUnits(selected, seed)
    rows = [
        {"of": j, "layer": row.layer, "unit": i, "slot": row.slot}
        for j, row in enumerate(neurons.itertuples())
        for i in units.draw(row.layer, n_random).tolist()
    ]
    return pd.DataFrame(rows, columns=["of", "layer", "unit", "slot"])


def _mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    return bootstrap_ci(np.mean, values, n_boot=n_boot, seed=rng)


def counterfactual(
    model: Model,
    prompt: SoftPrompt,
    pairs: Sequence[Any],  # (original, edited) tuples of Examples; checked below, with the fix
    neurons: NeuronLike,
    *,
    metric: MetricLike = "loss",
    n_random: int = 20,
    n_permutations: int = 10_000,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    site: SiteLike | None = None,
) -> Counterfactual:
    """Paired changes of the units' activations and of the model's behaviour over ``pairs``.

    Args:
        model: the model the units were selected on.
        prompt: the soft prompt they were selected with.
        pairs: ``(original, edited)`` examples that differ in one property
            (``sklens.edits.pairs`` builds them); at least 5.
        neurons: a ``Scan.top_k`` table (its ``slot`` column is each unit's slot).
        metric: the behaviour metric besides loss and accuracy (as ``sklens.evaluate`` takes).
        n_random: random units per selected unit (same layer and slot) to compare with; 0: none.
        n_permutations: sign patterns of the permutation test when they are too many to list.
        n_boot: bootstrap resamples of the intervals.
        seed: seeds the random units, the sign patterns and the bootstrap.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.
        site: the units' site (``sklens.sites``) when the table's ``site`` column cannot
            rebuild it (an SAE loaded in another process), e.g. ``scan.site``.
    """
    pairs = list(pairs)
    neurons = require_slots(neurons, "counterfactual").reset_index(drop=True)
    _check_pairs(pairs, n_random)
    before = [a for a, _ in pairs]
    after = [b for _, b in pairs]
    selected = NeuronSet.of(neurons, model, site=site)  # controls are units of the same site
    controls = _random_units(neurons, selected, n_random, seed)
    columns = ["layer", "unit", "slot"]
    read = pd.concat([neurons[columns], controls[columns]], ignore_index=True).astype(int)
    read_set = NeuronSet.of(read[["layer", "unit"]], site=selected.site)
    acts = at_selected_slot(
        slot_activations(
            model, prompt, before + after, read_set, batch_size=batch_size, progress=progress
        ),
        read,
    ).double()
    a0, a1 = acts[: len(pairs)], acts[len(pairs) :]
    p = sign_flip_p((a1 - a0)[:, : len(neurons)], n_permutations, seed).numpy()
    rng = np.random.default_rng(seed)
    units = _unit_table(
        neurons, controls, a0, a1, site=selected.site.name, p=p, n_boot=n_boot, rng=rng
    )
    behaviour = _behaviour(model, prompt, before, after, metric, n_boot, seed, batch_size, rng)
    per_pair = pd.DataFrame(
        {f"{u} before": a0[:, j].numpy() for j, u in enumerate(units.label)}
        | {f"{u} after": a1[:, j].numpy() for j, u in enumerate(units.label)}
    )
    return Counterfactual(units, behaviour, per_pair)


def _check_pairs(pairs: list[Any], n_random: int) -> None:
    """Refuse too few pairs, pairs that are not ``(original, edited)`` tuples, a negative
    ``n_random``."""
    if len(pairs) < MIN_PAIRS:
        raise ValueError(f"counterfactual needs at least {MIN_PAIRS} pairs, got {len(pairs)}")
    if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        raise TypeError("pairs must be (original, edited) tuples; sklens.edits.pairs builds them")
    if n_random < 0:
        raise ValueError(f"n_random must be at least 0, got {n_random}")


def _unit_table(
    neurons: pd.DataFrame,
    controls: pd.DataFrame,
    a0: Float[Tensor, "pair read"],
    a1: Float[Tensor, "pair read"],
    *,
    site: str,
    p: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per selected unit from the activations read before (``a0``) and after (``a1``)
    the edit, the selected units' columns first and then ``controls``': the paired change with
    its interval, ``d_std``, the sign-flip ``p`` and its BH ``q``, and against the unit's random
    controls ``p_vs_random`` (the share moving at least as much, |d_std|) and their median."""
    changes = a1 - a0
    d_std = (changes.mean(0) / a0.std(0)).numpy()
    k = len(neurons)
    records = []
    for j, row in enumerate(neurons.itertuples()):
        lo, hi = _mean_ci(changes[:, j].numpy(), n_boot, rng)
        mine = controls.index[controls["of"] == j].to_numpy() + k
        record = {
            "label": unit_slot_label(site, row.layer, row.unit, row.slot),
            "layer": row.layer,
            "unit": row.unit,
            "slot": row.slot,
            "n": len(a0),
            "mean_before": float(a0[:, j].mean()),
            "mean_after": float(a1[:, j].mean()),
            "d_act": float(changes[:, j].mean()),
            "d_act_lo": lo,
            "d_act_hi": hi,
            "d_std": float(d_std[j]),
            "p": float(p[j]),
        }
        if len(mine):
            record["p_vs_random"] = float(
                (1 + (np.abs(d_std[mine]) >= abs(d_std[j])).sum()) / (1 + len(mine))
            )
            record["random_abs_d_std_median"] = float(np.median(np.abs(d_std[mine])))
        records.append(record)
    units = pd.DataFrame(records)
    units.insert(units.columns.get_loc("p") + 1, "q", q_values(units["p"].to_numpy(), "bh"))
    return units


def _behaviour(
    model: Model,
    prompt: SoftPrompt,
    before: list[Example],
    after: list[Example],
    metric: MetricLike,
    n_boot: int,
    seed: int,
    batch_size: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """The paired change of each behaviour measure, and the share of changed picks."""
    base = evaluate(model, prompt, before, metric=metric, batch_size=batch_size)
    edited = evaluate(model, prompt, after, metric=metric, batch_size=batch_size)
    rows = []
    for name, column in BEHAVIOUR.items():
        x0, x1 = base[column].to_numpy(), edited[column].to_numpy()
        if np.isnan(x0).all():
            continue  # accuracy of examples that are not multiple choice
        change = x1 - x0
        lo, hi = _mean_ci(change, n_boot, rng)
        p = float(sign_flip_p(torch.from_numpy(change)[:, None], seed=seed)[0])
        rows.append(
            {
                "measure": name,
                "before": float(np.nanmean(x0)),
                "after": float(np.nanmean(x1)),
                "change": float(np.nanmean(change)),
                "lo": lo,
                "hi": hi,
                "p": p,
            }
        )
    if not np.isnan(base["chosen"].to_numpy()).all():
        changed = (base["chosen"].to_numpy() != edited["chosen"].to_numpy()).astype(float)
        lo, hi = _mean_ci(changed, n_boot, rng)
        rows.append(
            {
                "measure": "choice_changed",
                "before": 0.0,
                "after": float(changed.mean()),
                "change": float(changed.mean()),
                "lo": lo,
                "hi": hi,
                "p": np.nan,
            }
        )
    return pd.DataFrame(rows)
