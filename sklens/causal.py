"""Causal checks: does editing the selected neurons change the metric, the loss, the accuracy —
more than editing random neurons of the same layers?

For each mode (zero, mean, resample, ...) the selected set and ``n_random`` random sets with the
same number of neurons per layer (optionally matched in mean |activation|) are applied in turn.
Per example: the change of the metric, of the completion loss and, for multiple-choice examples
(``meta["choices"]`` and ``meta["answer"]``), of correctness (the correct choice has the highest
log-likelihood). Reported overall and per group of a meta field, with bootstrap 95% intervals,
and a two-sided p-value of the selected set's mean change against the random sets' means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from sklens import metrics as metrics_mod
from sklens.ablate import NeuronIntervention, neuron_index
from sklens.data.example import Example
from sklens.data.format import encode, iter_batches
from sklens.forward import completion_logprobs
from sklens.soft_prompt import SoftPrompt


def _expand_choices(
    examples: Sequence[Example],
) -> tuple[list[Example], list[int], list[int] | None]:
    """One example per (example, choice) when every example is multiple choice.

    Returns the expanded list, each row's example id, and each example's correct-choice row.
    """
    if not all(isinstance(e.meta.get("choices"), list) and "answer" in e.meta for e in examples):
        return list(examples), list(range(len(examples))), None
    rows, owner, correct = [], [], []
    for i, e in enumerate(examples):
        choices = [str(c) for c in e.meta["choices"]]
        if str(e.meta["answer"]) not in choices:
            raise ValueError(f"example {i}: answer {e.meta['answer']!r} is not among its choices")
        for c in choices:
            if c == str(e.meta["answer"]):
                correct.append(len(rows))
            rows.append(Example(e.instruction, c, e.meta))
            owner.append(i)
    return rows, owner, correct


def evaluate(
    model: Any,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    *,
    metric: Any = "loss",
    intervention: NeuronIntervention | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Per-example ``loss``, ``metric`` and ``correct`` (NaN without choices), under an optional
    intervention. ``metric`` is a sklens metric, a callable, or ``"loss"``/``"confidence"``."""
    examples = list(examples)
    metric = _metric(metric, len(examples))
    rows, owner, correct_rows = _expand_choices(examples)
    n_slots = prompt.n_tokens if prompt is not None else 0
    encoded = encode(model, rows, n_slots)
    total = torch.empty(len(rows), dtype=torch.float64)
    mean_loss = torch.empty(len(rows), dtype=torch.float64)
    hooks = []
    writer = prompt.writer() if prompt is not None else None
    if writer is not None:
        hooks.append(("hook_embed", writer))
    if intervention is not None:
        hooks.extend(intervention.hooks())
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in iter_batches(model, encoded, n_slots, batch_size):
            if writer is not None:
                writer.slot_start = batch.slot_start
            if intervention is not None:
                intervention.set_batch(batch, [owner[i] for i in batch.indices])
            scores = completion_logprobs(model, batch)
            total[batch.indices] = scores.total_logprob.double().cpu()
            mean_loss[batch.indices] = scores.mean_loss.double().cpu()
    own = correct_rows if correct_rows is not None else list(range(len(rows)))
    loss = mean_loss[own]
    out = pd.DataFrame({"example": range(len(examples)), "loss": loss.numpy()})
    if metric.needs_logprobs:
        fake = _Scores(loss, total[own])
        out["metric"] = metric(examples, range(len(examples)), fake).numpy()
    else:
        out["metric"] = metric(examples, range(len(examples)), None).numpy()
    if correct_rows is None:
        out["correct"] = np.nan
    else:
        owner_t = torch.tensor(owner)
        best = torch.full((len(examples),), -torch.inf, dtype=torch.float64)
        best = best.scatter_reduce(0, owner_t, total, reduce="amax")
        out["correct"] = (total[correct_rows] >= best).double().numpy()
    return out


class _Scores:
    """Per-example scores in the shape metrics expect from CompletionLogprobs."""

    def __init__(self, mean_loss: torch.Tensor, total_logprob: torch.Tensor):
        self.mean_loss, self.total_logprob = mean_loss, total_logprob


def _metric(metric: Any, n: int) -> metrics_mod.Metric:
    if metric == "loss":
        return metrics_mod.loss()
    if metric == "confidence":
        return metrics_mod.confidence()
    return metrics_mod.resolve(metric, n)


def neuron_stats(
    model: Any,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    layers: Sequence[int],
    *,
    positions: str = "slots",
    batch_size: int = 8,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per-neuron mean and mean |activation| over ``examples`` at ``positions`` ("slots"/"all")."""
    if positions == "slots" and prompt is None:
        raise ValueError(
            "positions='slots' needs a soft prompt; use positions='all' on a plain model"
        )
    n_slots = prompt.n_tokens if prompt is not None else 0
    encoded = encode(model, list(examples), n_slots)
    sums = {L: torch.zeros(model.cfg.d_mlp, dtype=torch.float64) for L in layers}
    abs_sums = {L: torch.zeros(model.cfg.d_mlp, dtype=torch.float64) for L in layers}
    count = {"n": 0}
    state: dict[str, Any] = {}

    def reader(L: int) -> Any:
        def read(act: torch.Tensor, hook: Any) -> None:
            mask = state["mask"].to(act.device)
            picked = act[mask].double().cpu()  # (n_positions, d_mlp)
            sums[L] += picked.sum(0)
            abs_sums[L] += picked.abs().sum(0)

        return read

    hooks = [(f"blocks.{L}.mlp.hook_post", reader(L)) for L in layers]
    writer = prompt.writer() if prompt is not None else None
    if writer is not None:
        hooks.insert(0, ("hook_embed", writer))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in iter_batches(
            model, encoded, n_slots, batch_size, with_completion=positions == "all"
        ):
            if positions == "slots":
                mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
                mask.scatter_(1, batch.slot_positions, True)
            else:
                mask = batch.attention_mask.bool()
            state["mask"] = mask
            if writer is not None:
                writer.slot_start = batch.slot_start
            model(batch.tokens, attention_mask=batch.attention_mask)
            count["n"] += int(mask.sum())
    n = count["n"]
    return {L: s / n for L, s in sums.items()}, {L: s / n for L, s in abs_sums.items()}


def random_sets(
    model: Any,
    neurons: Any,
    n_random: int,
    *,
    seed: int = 0,
    scale: dict[int, torch.Tensor] | None = None,
    pool: int = 20,
) -> list[dict[int, torch.Tensor]]:
    """``n_random`` sets with the same number of neurons per layer as ``neurons``, never
    containing a selected neuron. With ``scale`` (per-neuron mean |activation|), each selected
    neuron is replaced by one of the ``pool`` neurons of its layer closest to it in scale."""
    index = neuron_index(model, neurons)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_random):
        drawn = {}
        for L, ids in index.items():
            others = torch.tensor([i for i in range(model.cfg.d_mlp) if i not in set(ids.tolist())])
            if len(others) < len(ids):
                raise ValueError(f"layer {L} has too few unselected neurons for a random control")
            if scale is None:
                chosen = others[torch.randperm(len(others), generator=gen)[: len(ids)]]
            else:
                chosen_list: list[int] = []
                for i in ids.tolist():
                    free = torch.tensor([o for o in others.tolist() if o not in chosen_list])
                    near = free[(scale[L][free] - scale[L][i]).abs().argsort()[:pool]]
                    chosen_list.append(int(near[torch.randint(len(near), (1,), generator=gen)]))
                chosen = torch.tensor(chosen_list)
            drawn[L] = chosen.sort().values
        out.append(drawn)
    return out


def _bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (np.nan, np.nan)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def causal_check(
    model: Any,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: Any,
    *,
    metric: Any = "loss",
    modes: Sequence[str] = ("zero", "mean"),
    n_random: int = 10,
    seed: int = 0,
    positions: str | None = None,
    group_by: str | None = None,
    match_scale: bool = False,
    reference: Sequence[Example] | None = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
    **mode_options: Any,
) -> pd.DataFrame:
    """Edit ``neurons`` and matched random sets; report the changes against the unedited model.

    Args:
        positions: where to edit: "slots" (default with a prompt) or "all" (default without).
        group_by: a meta field; results are also reported per value.
        match_scale: draw random neurons with a similar mean |activation| (on ``reference``).
        reference: examples for ``mean`` ablation and scale matching (default: ``examples``).
        mode_options: passed to the interventions (``noise_std``, ``factor``, ``shift``).

    Returns one row per (mode, set, group) with ``n``, mean changes ``d_metric``, ``d_loss``,
    ``d_accuracy``, their bootstrap 95% intervals (``*_lo``, ``*_hi``), the baseline accuracy,
    and on the selected rows ``p_metric``, ``p_loss``, ``p_accuracy`` against the random sets.
    """
    examples = list(examples)
    if len(examples) < 2:
        raise ValueError("a causal check needs at least 2 examples")
    positions = positions or ("slots" if prompt is not None else "all")
    index = neuron_index(model, neurons)
    layers = list(index)
    reference = list(reference) if reference is not None else examples
    means = scale = None
    if "mean" in modes or match_scale:
        means, scale = neuron_stats(
            model, prompt, reference, layers, positions=positions, batch_size=batch_size
        )
    sets = {"selected": index}
    for r, drawn in enumerate(
        random_sets(model, index, n_random, seed=seed, scale=scale if match_scale else None)
    ):
        sets[f"random_{r}"] = drawn
    base = evaluate(model, prompt, examples, metric=metric, batch_size=batch_size)
    groups = {"all": np.ones(len(examples), dtype=bool)}
    if group_by is not None:
        labels = np.array([str(e.meta.get(group_by)) for e in examples])
        groups |= {f"{group_by}={v}": labels == v for v in sorted(set(labels))}
    rng = np.random.default_rng(seed)
    records = []
    total = len(modes) * len(sets)
    bar = tqdm(total=total, desc="causal check", disable=not progress)
    for mode in modes:
        for name, chosen in sets.items():
            intervention = NeuronIntervention(
                model,
                chosen,
                mode,
                positions=positions,
                means=means,
                seed=seed,
                **mode_options,
            )
            edited = evaluate(
                model,
                prompt,
                examples,
                metric=metric,
                intervention=intervention,
                batch_size=batch_size,
            )
            deltas = {k: (edited[k] - base[k]).to_numpy() for k in ("metric", "loss", "correct")}
            for group, mask in groups.items():
                row = {
                    "mode": mode,
                    "set": name,
                    "group": group,
                    "n": int(mask.sum()),
                    "n_neurons": sum(len(v) for v in chosen.values()),
                    "accuracy_base": float(np.nanmean(base["correct"].to_numpy()[mask]))
                    if not base["correct"].isna().all()
                    else np.nan,
                }
                for k, key in (("metric", "metric"), ("loss", "loss"), ("correct", "accuracy")):
                    d = deltas[k][mask]
                    row[f"d_{key}"] = float(np.nanmean(d)) if not np.isnan(d).all() else np.nan
                    row[f"d_{key}_lo"], row[f"d_{key}_hi"] = _bootstrap(d, n_boot, rng)
                records.append(row)
            bar.update(1)
    bar.close()
    table = pd.DataFrame(records)
    for key in ("metric", "loss", "accuracy"):
        table[f"p_{key}"] = np.nan
    for _, part in table.groupby(["mode", "group"]):
        selected = part[part.set == "selected"]
        randoms = part[part.set != "selected"]
        for key in ("metric", "loss", "accuracy"):
            sel = selected[f"d_{key}"].iloc[0]
            if np.isnan(sel) or randoms.empty:
                continue
            extreme = (randoms[f"d_{key}"].abs() >= abs(sel)).sum()
            table.loc[selected.index, f"p_{key}"] = (1 + extreme) / (1 + len(randoms))
    return table


def dose_response(
    model: Any,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    ranked: pd.DataFrame,
    *,
    ks: Sequence[int] = (1, 2, 5, 10),
    mode: str = "zero",
    n_random: int = 5,
    **kwargs: Any,
) -> pd.DataFrame:
    """The causal check of the top-``k`` neurons of ``ranked`` (a ``top_k`` table) for each k."""
    parts = []
    for k in ks:
        if k > len(ranked):
            raise ValueError(f"k={k} exceeds the {len(ranked)} ranked neurons given")
        part = causal_check(
            model, prompt, examples, ranked.head(k), modes=(mode,), n_random=n_random, **kwargs
        )
        parts.append(part.assign(k=k))
    return pd.concat(parts, ignore_index=True)
