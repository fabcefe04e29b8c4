"""Held-out confirmation: select neurons on one set of examples, measure them on another.
The selection's |r| is inflated by the max over millions of neurons and slots (the
winner's curse); the held-out r, with its confidence interval, is the honest estimate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from sklens.data.example import Example
from sklens.data.format import encode
from sklens.data.split import train_val_split
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics
from sklens.scanning.activations import NeuronReader, at_selected_slot, slot_activations
from sklens.scanning.metrics import MetricLike
from sklens.scanning.scan import scan, values_before_pass
from sklens.stats import bootstrap_ci, fisher_ci
from sklens.stats.measures import (
    PAIRED,
    auroc,
    check_measures,
    cohens_d,
    eta_squared,
    kruskal_wallis,
    partial_pearson,
    pearson,
)
from sklens.stats.ranking import Reduce
from sklens.units.neuron_set import NeuronSet
from sklens.vocabulary import GROUP_MEASURES


def held_out(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
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
    metric: MetricLike,
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

    Columns: layer, unit, slot, ``r_select`` (the selection's in-sample r), ``r_heldout``
    with its Fisher-z 95% interval (``r_lo``, ``r_hi``: per neuron, not adjusted for the K
    neurons) and the Bonferroni-adjusted interval at level ``1 − 0.05/K`` (``r_lo_adj``,
    ``r_hi_adj``: all K intervals hold together with ≥ 95% probability); for a binary metric
    also ``auroc`` and ``cohens_d`` with per-neuron bootstrap 95% intervals; and one column per
    name in ``measures`` (``neuron_measures``), computed on the same held-out
    examples. One pass over ``examples`` reads the K neurons and the metric (``read_neurons``).

    Args:
        model: the model the neurons were selected on.
        prompt: the soft prompt they were selected with.
        examples: held-out examples (at least 4), none of them used for the selection: any of
            the examples a ``Scan.top_k`` table came from is refused, as ``sklens.explain``
            does (a table read back from a file cannot be checked, and gets a warning).
        metric: the selection's metric (a ``sklens.metrics`` metric, callable, or values).
        neurons: a ``Scan.top_k`` table (its ``slot`` column is each neuron's slot).
        measures: further measures by name (``sklens.vocabulary.MEASURES``).
        group_by: the meta field with the groups, for eta_squared and kruskal_wallis.
        covariates: numeric meta fields to control for, for partial_pearson.
        seed: seeds the bootstrap.
        n_boot: bootstrap resamples of the AUROC and Cohen's d intervals.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.
    """
    arguments.model(model)
    arguments.prompt(prompt, optional=False)
    examples = arguments.examples(examples)
    if len(examples) < 4:
        raise ValueError(f"confirmation needs at least 4 held-out examples, got {len(examples)}")
    check_measures(measures)
    arguments.held_out(examples, neurons, "confirm_neurons")
    picked, values = read_neurons(
        model, prompt, examples, neurons, metric, batch_size=batch_size, progress=progress
    )
    return confirm_from(
        picked,
        values,
        neurons,
        examples,
        measures=measures,
        group_by=group_by,
        covariates=covariates,
        seed=seed,
        n_boot=n_boot,
    )


def read_neurons(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    metric: MetricLike,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[Float[Tensor, "n_examples n_neurons"], Float[Tensor, " n_examples"]]:
    """One pass: each neuron of a ``top_k`` table at its selected slot, and the metric, on every
    example (a loss metric from the same pass; the pass stops after the neurons' last layer
    when the metric is known before it)."""
    examples = list(examples)
    metric = metrics.resolve(metric, len(examples))
    metric.check(examples)
    chosen = NeuronSet.of(neurons, model)
    known = values_before_pass(model, prompt, examples, metric, batch_size)
    reader = NeuronReader(chosen, slots_only=True)
    acts = torch.empty(len(examples), len(chosen), prompt.n_slots)
    values = torch.full((len(examples),), torch.nan, dtype=torch.float64)
    for batch, scores in batched_pass(
        model,
        encode(model, examples, prompt.n_slots),
        prompt.n_slots,
        [prompt.writer(), reader],
        batch_size=batch_size,
        logprobs=known is None,
        stop_after=reader.last_hook if known is not None else None,
        progress=progress,
        desc="confirm",
    ):
        acts[torch.tensor(batch.indices)] = reader.values.permute(0, 2, 1)
        if known is None:
            batch_values = metric([examples[i] for i in batch.indices], batch.indices, scores)
            values[batch.indices] = batch_values.cpu().double()
    values = known.cpu().double() if known is not None else values
    metrics.check_values(values, metric.name)
    return at_selected_slot(acts, neurons), values


def confirm_from(
    picked: Float[Tensor, "n_examples n_neurons"],
    values: Float[Tensor, " n_examples"],
    neurons: pd.DataFrame,
    examples: Sequence[Example],
    *,
    measures: Sequence[str] = (),
    group_by: str | None = None,
    covariates: Sequence[str] = (),
    seed: int = 0,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """``confirm_neurons``'s table from activations already read (``read_neurons``)."""
    top = neurons
    table = top[["layer", "unit", "slot"]].copy()
    table["r_select"] = top["corr"].to_numpy()
    picked = picked.double()
    r = pearson(picked, values).clamp(-1, 1).tolist()
    n = len(values)
    level = 1 - 0.05 / max(len(top), 1)
    table["r_heldout"] = r
    table["r_lo"], table["r_hi"] = zip(*(fisher_ci(x, n) for x in r), strict=True)
    table["r_lo_adj"], table["r_hi_adj"] = zip(*(fisher_ci(x, n, level) for x in r), strict=True)
    if len(torch.unique(values)) == 2:
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
        extra = measures_of(
            picked,
            top,
            examples,
            values,
            measures=measures,
            group_by=group_by,
            covariates=covariates,
        )
        new = [c for c in extra.columns if c not in table.columns]  # auroc may be there already
        table = pd.concat([table, extra[new]], axis=1)
    table.attrs["n_heldout"] = n
    return table


def neuron_measures(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    metric_values: Sequence[float] | Tensor | np.ndarray,
    *,
    measures: Sequence[str] = ("spearman",),
    group_by: str | None = None,
    covariates: Sequence[str] = (),
    batch_size: int = 8,
) -> pd.DataFrame:
    """The measures for each neuron of a ``top_k`` table at its selected slot (its ``slot`` column)."""
    check_measures(measures)
    examples = list(examples)
    acts = slot_activations(model, prompt, examples, neurons, batch_size=batch_size)
    return measures_of(
        at_selected_slot(acts, neurons),
        neurons,
        examples,
        metric_values,
        measures=measures,
        group_by=group_by,
        covariates=covariates,
    )


def measures_of(
    picked: Float[Tensor, "n_examples n_neurons"],
    neurons: pd.DataFrame,
    examples: Sequence[Example],
    metric_values: Sequence[float] | Tensor | np.ndarray,
    *,
    measures: Sequence[str] = ("spearman",),
    group_by: str | None = None,
    covariates: Sequence[str] = (),
) -> pd.DataFrame:
    """``neuron_measures`` from activations already read: ``picked[i, j]`` is neuron ``j``'s
    activation at its selected slot on example ``i``."""
    check_measures(measures)
    examples = list(examples)
    metric = torch.as_tensor(np.asarray(metric_values, dtype=np.float64))
    if len(metric) != len(examples):
        raise ValueError(f"{len(metric)} metric values for {len(examples)} examples")
    picked = picked.double()
    out = neurons[["layer", "unit", "slot"]].copy()
    for name in measures:
        if name in GROUP_MEASURES:
            if group_by is None:
                raise ValueError(f"{name} needs group_by, a meta field with the groups")
            groups = [e.meta[group_by] for e in examples]
            if name == "eta_squared":
                out[name] = eta_squared(picked, groups).numpy()
            else:
                h, p = kruskal_wallis(picked, groups)
                out["kruskal_h"], out["kruskal_p"] = h.numpy(), p.numpy()
        elif name == "partial_pearson":
            if not covariates:
                raise ValueError(
                    "partial_pearson needs covariates, numeric meta fields to control for"
                )
            cov = torch.tensor([[float(e.meta[c]) for c in covariates] for e in examples])
            out[name] = partial_pearson(picked, metric, cov).numpy()
        else:
            out[name] = PAIRED[name](picked, metric).numpy()
    return out
