"""Held-out confirmation: select neurons on one set of examples, measure them on another.
The selection's |r| is inflated by the max over millions of neurons and slots (the
winner's curse); the held-out r, with its confidence interval, is the honest estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sklens import metrics
from sklens.activations import at_selected_slot, slot_activations
from sklens.data.example import Example
from sklens.data.split import train_val_split
from sklens.models.protocol import Model
from sklens.ranking import Reduce
from sklens.scan import scan
from sklens.soft_prompt import SoftPrompt
from sklens.stats import bootstrap_ci, fisher_ci
from sklens.stats.measures import auroc, cohens_d, neuron_measures


def held_out(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: Any,
    *,
    k: int = 10,
    select_fraction: float = 0.5,
    reduce: Reduce = "max",
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-``k`` neurons chosen on a ``select_fraction`` split, re-measured on the rest
    (``confirm_neurons``). ``n_select`` and ``n_heldout`` are in ``DataFrame.attrs``.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the trained soft prompt.
        examples: the examples to split (none used for training the prompt).
        metric: the auxiliary metric, as ``scan`` takes it.
        k: how many top neurons to select and confirm.
        select_fraction: the share of ``examples`` that selects.
        reduce: the ranking rule (``"max"``, the paper's, or ``"absmax"``).
        seed: seeds the split and the bootstrap.
        n_boot: bootstrap resamples.
        batch_size: examples per forward pass.
        progress: show tqdm bars.
    """
    examples = list(examples)
    metric = metrics.resolve(metric, len(examples))
    confirm_idx, select_idx = train_val_split(
        list(range(len(examples))), select_fraction, seed=seed
    )
    if len(select_idx) < 3 or len(confirm_idx) < 4:
        raise ValueError(f"{len(examples)} examples are too few to split for a held-out check")
    select = [examples[i] for i in select_idx]
    first = scan(
        model, prompt, select, metric.subset(select_idx), batch_size=batch_size, progress=progress
    )
    table = confirm_neurons(
        model,
        prompt,
        [examples[i] for i in confirm_idx],
        metric.subset(confirm_idx),
        first.top_k(k, reduce),
        seed=seed,
        n_boot=n_boot,
        batch_size=batch_size,
        progress=progress,
    )
    table.attrs["n_select"] = len(select)
    return table


def confirm_neurons(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: Any,
    neurons: pd.DataFrame,
    *,
    measures: Sequence[str] = (),
    group_by: str | None = None,
    covariates: Sequence[str] = (),
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Re-measure selected neurons (a ``top_k`` table) on ``examples`` disjoint from the ones
    that selected them.

    Columns: layer, neuron, slot, ``r_select`` (the selection's in-sample r), ``r_heldout``
    with its Fisher-z 95% interval (``r_lo``, ``r_hi``: per neuron, not adjusted for the K
    neurons) and the Bonferroni-adjusted interval at level ``1 − 0.05/K`` (``r_lo_adj``,
    ``r_hi_adj``: all K intervals hold together with ≥ 95% probability); for a binary metric
    also ``auroc`` and ``cohens_d`` with per-neuron bootstrap 95% intervals; and one column per
    name in ``measures`` (``sklens.stats.measures.neuron_measures``), computed on the same held-out
    examples.

    Args:
        model: the model the neurons were selected on.
        prompt: the soft prompt they were selected with.
        examples: held-out examples (at least 4), none of them used for the selection.
        metric: the selection's metric (a ``sklens.metrics`` metric, callable, or values).
        neurons: a ``Scan.top_k`` table (its ``slot`` column is each neuron's slot).
        measures: further measures by name (``sklens.config.MEASURES``).
        group_by: the meta field with the groups, for eta_squared and kruskal_wallis.
        covariates: numeric meta fields to control for, for partial_pearson.
        seed: seeds the bootstrap.
        n_boot: bootstrap resamples of the AUROC and Cohen's d intervals.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.
    """
    examples = list(examples)
    metric = metrics.resolve(metric, len(examples))
    if len(examples) < 4:
        raise ValueError(f"confirmation needs at least 4 held-out examples, got {len(examples)}")
    second = scan(model, prompt, examples, metric, batch_size=batch_size, progress=progress)
    layer_row = {L: j for j, L in enumerate(second.layers)}
    corr = second.corr
    top = neurons
    table = top[["layer", "neuron", "slot"]].copy()
    table["r_select"] = top["corr"].to_numpy()
    r = [
        float(corr[layer_row[L], i, p])
        for L, i, p in zip(top.layer, top.neuron, top.slot, strict=True)
    ]
    n = len(examples)
    level = 1 - 0.05 / max(len(top), 1)
    table["r_heldout"] = r
    table["r_lo"], table["r_hi"] = zip(*(fisher_ci(x, n) for x in r), strict=True)
    table["r_lo_adj"], table["r_hi_adj"] = zip(*(fisher_ci(x, n, level) for x in r), strict=True)
    values = second.metric_values
    if len(torch.unique(values)) == 2:
        acts = slot_activations(model, prompt, examples, top, batch_size=batch_size)
        picked = at_selected_slot(acts, top).double()
        y = values.numpy()
        for name, fn in (("auroc", auroc), ("cohens_d", cohens_d)):
            table[name] = fn(picked, values).numpy()
            intervals = [
                bootstrap_ci(
                    lambda a, m, f=fn: (
                        float(f(torch.from_numpy(a)[:, None], torch.from_numpy(m))[0])
                        if len(np.unique(m)) == 2
                        else float("nan")
                    ),
                    picked[:, j].numpy(),
                    y,
                    n_boot=n_boot,
                    seed=seed,
                )
                for j in range(len(top))
            ]
            table[f"{name}_lo"], table[f"{name}_hi"] = zip(*intervals, strict=True)
    if measures:
        extra = neuron_measures(
            model,
            prompt,
            examples,
            top,
            values,
            measures=measures,
            group_by=group_by,
            covariates=covariates,
            batch_size=batch_size,
        )
        new = [c for c in extra.columns if c not in table.columns]  # auroc may be there already
        table = pd.concat([table, extra[new]], axis=1)
    table.attrs["n_heldout"] = n
    return table
