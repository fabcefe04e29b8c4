"""Causal checks: does editing the selected neurons change the metric, the loss, the accuracy —
more than editing random neurons of the same layers?

For each mode (zero, mean, resample, ...) the selected set and ``n_random`` random sets with the
same number of neurons per layer (optionally matched in mean |activation|) are applied in turn.
Per example: the change of the metric, of the completion loss and, for multiple-choice examples
(``meta["choices"]`` and ``meta["answer"]``), of correctness (the correct choice has the highest
total log-likelihood, and, length-normalised, the highest mean per-token log-likelihood).
Reported overall and per group of a meta field, with bootstrap 95% intervals, and a two-sided
rank p-value of the selected set's mean change among the random sets' mean changes, taken around
the random sets' median (``sklens.stats.rank_p``): it asks whether the selected edit is unusual
*for an edit of that many neurons*, not whether it differs from zero. Random sets are matched in
activation scale by default (``match_scale``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from sklens import validate
from sklens.causal.ablate import NeuronIntervention
from sklens.data.example import Example
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass, gather_slots, slot_count, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics as metrics_mod
from sklens.scanning.choices import score_examples
from sklens.stats import bootstrap_ci, rank_p
from sklens.units.neuron_set import NeuronSet, nonempty
from sklens.units.sites import Site, SiteLike, resolve_site
from sklens.vocabulary import ABLATION_MODES, AblationMode, Positions


def evaluate(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    *,
    metric: Any = "loss",
    intervention: NeuronIntervention | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Per-example ``loss``, ``metric``, and for multiple-choice examples ``correct`` (highest
    total log-probability), ``correct_per_token`` (highest mean per-token log-probability) and
    ``choice_confidence`` and ``chosen`` (the index of the model's choice) (NaN otherwise), under
    an optional intervention (``sklens.scanning.choices``).
    ``metric`` is a sklens metric, a callable, or ``"loss"``/``"confidence"``."""
    examples = list(examples)
    metric = metrics_mod.resolve(metric, len(examples))
    metric.check(examples)
    scores = score_examples(
        model, prompt, examples, intervention=intervention, batch_size=batch_size
    )
    out = pd.DataFrame({"example": range(len(examples)), "loss": scores.mean_loss.numpy()})
    given = scores if (metric.needs_logprobs or metric.needs_choices) else None
    out["metric"] = metric(examples, range(len(examples)), given).numpy()
    out["correct"] = scores.correct.numpy()
    out["correct_per_token"] = scores.correct_per_token.numpy()
    out["choice_confidence"] = scores.choice_confidence.numpy()
    out["chosen"] = scores.chosen.numpy()
    return out


class _Sums:
    """Sums of unit values (per unit and slot, or per unit) and of |value| over the batches of a
    ``batched_pass``, for ``neuron_stats``."""

    def __init__(self, layers: Sequence[int], site: Site, n_slots: int, *, slots: bool):
        self.slots, self.site, self.n_slots = slots, site, n_slots
        shape = (site.size, n_slots) if slots else (site.size,)
        self.sums = {L: torch.zeros(shape, dtype=torch.float64) for L in layers}
        self.abs_sums = {L: torch.zeros(site.size, dtype=torch.float64) for L in layers}
        self.rows = self.positions = 0
        self.batch: Batch | None = None

    def start(self, batch: Batch) -> None:
        self.batch = batch
        self.rows += len(batch.indices)
        n = int(batch.attention_mask.sum())
        self.positions += len(batch.indices) * self.n_slots if self.slots else n

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(L), self._reader(L)) for L in self.sums]

    def _reader(self, layer: int) -> Any:
        def read(act: Float[Tensor, "batch pos *site"], hook: Any) -> None:
            if self.slots:
                units = self.site.units(gather_slots(act, self.batch), layer)
                picked = units.double().cpu()  # (B, k, units)
                self.sums[layer] += picked.sum(0).T
            else:
                mask = self.batch.attention_mask.bool().to(act.device)
                picked = self.site.units(act, layer)[mask].double().cpu()  # (n_pos, units)
                self.sums[layer] += picked.sum(0)
            self.abs_sums[layer] += picked.abs().reshape(-1, self.site.size).sum(0)

        return read


def neuron_stats(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    layers: Sequence[int],
    *,
    positions: Positions = "slots",
    batch_size: int = 8,
    site: SiteLike | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per-unit means over ``examples`` and mean |activation|, at ``positions`` (units of
    ``site``, default MLP neurons; ``d_mlp`` below is the site's units per layer).

    With ``positions="slots"`` the means are position-matched, one per (neuron, slot):
    ``[d_mlp, n_slots]`` per layer, because each slot is its own learned vector with its own
    typical activation (a mean pooled over slots would add a slot-specific shift, a steering
    edit, on top of removing the example's information). With ``"all"`` they are ``[d_mlp]``.
    The mean |activation| (``[d_mlp]``, for scale-matched random sets) pools every position.
    """
    if positions == "slots" and prompt is None:
        raise ValueError(
            "positions='slots' needs a soft prompt; use positions='all' on a plain model"
        )
    n_slots = slot_count(prompt)
    encoded = encode(model, list(examples), n_slots)
    site = resolve_site(site, model) if not isinstance(site, Site) or not site.size else site
    acc = _Sums(layers, site, n_slots, slots=positions == "slots")
    parts = with_prompt(prompt, acc)
    for _ in batched_pass(
        model,
        encoded,
        n_slots,
        parts,
        batch_size=batch_size,
        with_completion=positions == "all",
        stop_after=site.hook(max(layers)),
    ):
        pass
    per_mean = acc.rows if positions == "slots" else acc.positions
    means = {L: s / per_mean for L, s in acc.sums.items()}
    return means, {L: s / acc.positions for L, s in acc.abs_sums.items()}


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
        self, layer: int, ids: Int[Tensor, " k"], scale: Float[Tensor, " units"], pool: int
    ) -> Int[Tensor, " k"]:
        """One distinct unselected unit of ``layer`` per unit of ``ids``, each drawn among the
        ``pool`` units left that are closest to it in ``scale``."""
        others = self.others[layer].tolist()
        chosen: list[int] = []
        for i in ids.tolist():
            free = torch.tensor([o for o in others if o not in chosen], dtype=torch.long)
            near = free[(scale[free] - scale[i]).abs().argsort()[:pool]]
            chosen.append(int(near[torch.randint(len(near), (1,), generator=self.gen)]))
        return torch.tensor(chosen, dtype=torch.long)


def random_sets(
    model: Model,
    neurons: Any,
    n_random: int,
    *,
    seed: int = 0,
    scale: dict[int, torch.Tensor] | None = None,
    pool: int = 20,
) -> list[dict[int, torch.Tensor]]:
    """``n_random`` sets (``{layer: ids}``) of the same site with the same number of units per layer as
    ``neurons``, never containing a selected unit. With ``scale`` (per-unit mean |activation|),
    each selected unit is replaced by one of the ``pool`` units of its layer closest in scale."""
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
            if scale is None:
                drawn[L] = units.draw(L, len(ids)).sort().values
            else:
                drawn[L] = units.matched(L, ids, scale[L], pool).sort().values
        out.append(drawn)
    return out


def causal_check(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: Any,
    *,
    metric: Any = "loss",
    modes: Sequence[str] | str = ("zero", "mean"),
    n_random: int = 10,
    seed: int = 0,
    positions: str | None = None,
    group_by: str | None = None,
    match_scale: bool = True,
    reference: Sequence[Example] | None = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
    site: SiteLike | None = None,
    **mode_options: Any,
) -> pd.DataFrame:
    """Edit ``neurons`` and matched random sets; report the changes against the unedited model.

    The random sets are units of the same site (``sklens.sites``) as ``neurons``: a table's
    ``site`` column, or ``site=`` for pairs (e.g. ``scan.site``).

    Args:
        modes: the edits (``sklens.causal.ablate``), e.g. ``("zero", "mean")``; one name is one mode.
        n_random: random sets to compare with (at least 1).
        positions: where to edit: "slots" (default with a prompt) or "all" (default without).
        group_by: a meta field every example has; results are also reported per value.
        match_scale: draw random neurons with a similar mean |activation| (on ``reference``);
            on by default, since selection by |r| can favour neurons of a particular scale.
        reference: examples for ``mean`` ablation (per-slot means) and scale matching (default:
            ``examples``; a split disjoint from the neurons' selection set is cleaner).
        mode_options: passed to the interventions (``noise_std``, ``factor``, ``shift``).

    Returns one row per (mode, set, group) with ``n``, mean changes ``d_metric``, ``d_loss``,
    ``d_accuracy`` (argmax of total log-probability) and ``d_accuracy_per_token`` (argmax of mean
    per-token log-probability), their bootstrap 95% intervals (``*_lo``, ``*_hi``), the baseline
    accuracies, ``match_scale``, and on the selected rows ``p_metric``, ``p_loss``,
    ``p_accuracy``, ``p_accuracy_per_token``: two-sided rank p-values against the random sets'
    changes around their median (smallest possible ``1/(n_random+1)``).
    """
    examples, modes = _checked(model, prompt, examples, modes, n_random, group_by)
    positions = positions or ("slots" if prompt is not None else "all")
    selected = nonempty(NeuronSet.of(neurons, model, site=site))
    means = scale = None
    if "mean" in modes or match_scale:
        means, scale = neuron_stats(
            model,
            prompt,
            list(reference) if reference is not None else examples,
            selected.layers,
            positions=positions,
            batch_size=batch_size,
            site=selected.site,
        )
    sets = _sets(model, selected, n_random, seed, scale if match_scale else None)
    base = evaluate(model, prompt, examples, metric=metric, batch_size=batch_size)
    changes = _Changes(base, _groups(examples, group_by), match_scale, n_boot, seed)
    bar = tqdm(total=len(modes) * len(sets), desc="causal check", disable=not progress)
    for mode in modes:
        for name, chosen in sets.items():
            edit = NeuronIntervention(
                model, chosen, mode, positions=positions, means=means, seed=seed, **mode_options
            )
            edited = evaluate(
                model, prompt, examples, metric=metric, intervention=edit, batch_size=batch_size
            )
            changes.add(mode, name, len(chosen), edited)
            bar.update(1)
    bar.close()
    return changes.table()


def _checked(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    modes: Sequence[str] | str,
    n_random: int,
    group_by: str | None,
) -> tuple[list[Example], tuple[str, ...]]:
    """A causal check's examples (at least 2) and modes, its arguments checked before any pass."""
    arguments.model(model)
    arguments.prompt(prompt)
    examples = arguments.examples(examples)
    if len(examples) < 2:
        raise ValueError("a causal check needs at least 2 examples")
    modes = _modes(modes)
    validate.integer("n_random", n_random, minimum=1, meaning="random sets to compare with")
    if group_by is not None:
        _check_group_by(examples, group_by)
    return examples, modes


def _sets(
    model: Model,
    selected: NeuronSet,
    n_random: int,
    seed: int,
    scale: dict[int, torch.Tensor] | None,
) -> dict[str, NeuronSet]:
    """The sets a causal check edits, by their name in its table: ``selected``, then
    ``random_0`` ... (``random_sets``, scale-matched when ``scale`` is given)."""
    sets = {"selected": NeuronSet.of(selected.by_layer(), site=selected.site)}
    for r, drawn in enumerate(random_sets(model, selected, n_random, seed=seed, scale=scale)):
        sets[f"random_{r}"] = NeuronSet.of(drawn, site=selected.site)
    return sets


def _groups(examples: Sequence[Example], group_by: str | None) -> dict[str, np.ndarray]:
    """The examples' groups as masks: ``all``, and with ``group_by`` one per value of that meta
    field (``"field=value"``, values sorted as text)."""
    groups = {"all": np.ones(len(examples), dtype=bool)}
    if group_by is not None:
        labels = np.array([str(e.meta[group_by]) for e in examples])
        groups |= {f"{group_by}={v}": labels == v for v in sorted(set(labels))}
    return groups


class _Changes:
    """A causal check's table, row by row: each edit's changes from the unedited evaluation
    ``base``, per group, with bootstrap intervals drawn in table order from one generator."""

    def __init__(
        self,
        base: pd.DataFrame,
        groups: dict[str, np.ndarray],
        match_scale: bool,
        n_boot: int,
        seed: int,
    ):
        self.base, self.groups, self.match_scale, self.n_boot = base, groups, match_scale, n_boot
        self.rng = np.random.default_rng(seed)
        self.records: list[dict[str, Any]] = []

    def add(self, mode: str, name: str, n_neurons: int, edited: pd.DataFrame) -> None:
        """One row per group for the edit of set ``name`` (``n_neurons`` units) by ``mode``."""
        base = self.base
        deltas = {k: (edited[k] - base[k]).to_numpy() for k in _CHANGES}
        for group, mask in self.groups.items():
            row = {
                "mode": mode,
                "set": name,
                "group": group,
                "n": int(mask.sum()),
                "n_neurons": n_neurons,
                "match_scale": self.match_scale,
                "accuracy_base": _mean(base["correct"].to_numpy()[mask]),
                "accuracy_per_token_base": _mean(base["correct_per_token"].to_numpy()[mask]),
            }
            for k, key in _CHANGES.items():
                d = deltas[k][mask]
                row[f"d_{key}"] = _mean(d)
                row[f"d_{key}_lo"], row[f"d_{key}_hi"] = bootstrap_ci(
                    np.mean, d[~np.isnan(d)], n_boot=self.n_boot, seed=self.rng
                )
            self.records.append(row)

    def table(self) -> pd.DataFrame:
        """The rows, and on the selected ones the rank p-value of each change among the random
        sets' changes of the same mode and group."""
        table = pd.DataFrame(self.records)
        for key in _CHANGES.values():
            table[f"p_{key}"] = np.nan
        for _, part in table.groupby(["mode", "group"]):
            selected = part[part.set == "selected"]
            randoms = part[part.set != "selected"]
            for key in _CHANGES.values():
                p = rank_p(float(selected[f"d_{key}"].iloc[0]), randoms[f"d_{key}"].to_numpy())
                table.loc[selected.index, f"p_{key}"] = p
        return table


def _modes(modes: Sequence[str] | str) -> tuple[str, ...]:
    """``modes`` as a tuple of known modes; one name (``modes="zero"``) is one mode."""
    if isinstance(modes, str):
        modes = (modes,)
    modes = tuple(modes)
    unknown = [m for m in modes if m not in ABLATION_MODES]
    if not modes or unknown:
        raise ValueError(
            f"modes must be one or more of {ABLATION_MODES}, got {list(modes)}: e.g. "
            "modes=('zero', 'mean')"
        )
    return modes


def _check_group_by(examples: Sequence[Example], field: str) -> None:
    """Every example has the meta field ``group_by`` names (a missing one is no group)."""
    lacking = next((i for i, e in enumerate(examples) if field not in e.meta), None)
    if lacking is not None:
        have = sorted({str(k) for e in examples for k in e.meta})
        raise ValueError(
            f"group_by={field!r}: example {lacking} has no meta field {field!r}; the examples' "
            f"meta fields are {have}"
        )


# evaluate's per-example columns whose change a causal check reports, and their names there
_CHANGES = {
    "metric": "metric",
    "loss": "loss",
    "correct": "accuracy",
    "correct_per_token": "accuracy_per_token",
}


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if not np.isnan(values).all() else np.nan


def dose_response(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    ranked: pd.DataFrame,
    *,
    ks: Sequence[int] = (1, 2, 5, 10),
    mode: AblationMode = "zero",
    n_random: int = 5,
    **kwargs: Any,
) -> pd.DataFrame:
    """The causal check of the top-``k`` neurons of ``ranked`` (a ``top_k`` table) for each k.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt (None: no prompt).
        examples: examples that neither trained the prompt nor selected the neurons.
        ranked: a ``Scan.top_k`` table with at least ``max(ks)`` rows, best first.
        ks: the set sizes to ablate.
        mode: the ablation mode (``sklens.causal.ablate``).
        n_random: random sets per k, matched in layers (and scale, by default).
        **kwargs: passed to ``causal_check`` (``metric``, ``reference``, ``match_scale``, ...).

    Returns:
        ``causal_check``'s table for every k, with a ``k`` column.
    """
    parts = []
    for k in ks:
        if k > len(ranked):
            raise ValueError(f"k={k} exceeds the {len(ranked)} ranked neurons given")
        part = causal_check(
            model, prompt, examples, ranked.head(k), modes=(mode,), n_random=n_random, **kwargs
        )
        parts.append(part.assign(k=k))
    return pd.concat(parts, ignore_index=True)
