"""Held-out confirmation: select neurons on one part of the validation set, measure them on the
other. The selection's |r| is inflated by the max over millions of neurons and slots (the
winner's curse); the held-out r, with its confidence interval, is the honest estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from sklens import metrics
from sklens.activations import as_neuron_list, slot_activations
from sklens.data.example import Example
from sklens.data.split import train_val_split
from sklens.measures import auroc, cohens_d
from sklens.scan import scan
from sklens.soft_prompt import SoftPrompt
from sklens.stats import bootstrap_ci, fisher_ci


def held_out(
    model: Any,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: Any,
    *,
    k: int = 10,
    select_fraction: float = 0.5,
    reduce: str = "max",
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-``k`` neurons chosen on a ``select_fraction`` split, re-measured on the rest.

    Columns: layer, neuron, position, ``r_select``, ``r_heldout`` with its Fisher-z 95% interval
    (``r_lo``, ``r_hi``); for a binary metric also ``auroc`` and ``cohens_d`` with bootstrap
    intervals. ``n_select`` and ``n_heldout`` are in ``DataFrame.attrs``.
    """
    examples = list(examples)
    metric = metrics.resolve(metric, len(examples))
    confirm_idx, select_idx = train_val_split(
        list(range(len(examples))), select_fraction, seed=seed
    )
    if len(select_idx) < 3 or len(confirm_idx) < 4:
        raise ValueError(f"{len(examples)} examples are too few to split for a held-out check")
    select = [examples[i] for i in select_idx]
    confirm = [examples[i] for i in confirm_idx]
    first = scan(
        model, prompt, select, metric.subset(select_idx), batch_size=batch_size, progress=progress
    )
    top = first.top_k(k, reduce)
    second = scan(
        model, prompt, confirm, metric.subset(confirm_idx), batch_size=batch_size, progress=progress
    )
    layer_row = {L: j for j, L in enumerate(second.layers)}
    corr = second.corr
    table = top[["layer", "neuron", "position"]].copy()
    table["r_select"] = top["corr"].to_numpy()
    r = [
        float(corr[layer_row[L], i, p])
        for L, i, p in zip(top.layer, top.neuron, top.position, strict=True)
    ]
    table["r_heldout"] = r
    table["r_lo"], table["r_hi"] = zip(*(fisher_ci(x, len(confirm)) for x in r), strict=True)
    values = second.metric_values
    if len(torch.unique(values)) == 2:
        acts = slot_activations(model, prompt, confirm, as_neuron_list(top), batch_size=batch_size)
        picked = acts[:, torch.arange(len(top)), torch.tensor(top.position.to_numpy())].double()
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
    table.attrs.update({"n_select": len(select), "n_heldout": len(confirm)})
    return table
