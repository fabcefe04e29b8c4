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
activation scale by default (``match_scale``), and in a stratum (e.g. the decile of |score|) when
``strata`` is given (``sklens.causal.controls``).

So that a check can say more than "not unusual", each tested row (the selected set, and the
positive control when asked for: a set known to matter, whose row shows the test detects an
effect where there is one) also carries, per change:

* ``mde_*``: the smallest distance from the random sets' median that the rank test could call
  unusual at 0.05 with these random sets (infinite below 19 of them: the test cannot reach 0.05);
* ``excess_*`` with ``excess_*_lo``/``_hi``: the change beyond the random median, with the
  selected change's bootstrap interval (the median's own uncertainty is not included), and
  ``bound_*``: the largest excess the interval leaves, i.e. the data exclude an excess effect
  larger than it (95%); ``prompt_effect_loss`` (how much the prompt lowers the loss against no
  prompt, on the same examples) puts the loss bound in proportion;
* ``choice_changed`` (every row, multiple-choice examples only): the share of examples whose
  chosen answer the edit changes, with its interval.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sklens import validate
from sklens.causal.ablate import NeuronIntervention
from sklens.causal.changes import Changes
from sklens.causal.controls import positive_set, random_sets
from sklens.data.example import Example, content_hash
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.parts import Parts
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass, gather_slots, slot_count, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics as metrics_mod
from sklens.scanning.choices import score_examples
from sklens.scanning.metrics import MetricLike
from sklens.units.neuron_set import NeuronLike, NeuronSet, nonempty
from sklens.units.sites import Site, SiteLike, resolve_site
from sklens.vocabulary import ABLATION_MODES, AblationMode, Positions


def evaluate(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    *,
    metric: MetricLike = "loss",
    intervention: NeuronIntervention | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Per-example ``loss``, ``metric``, and for multiple-choice examples ``correct`` (highest
    total log-probability), ``correct_per_token`` (highest mean per-token log-probability) and
    ``choice_confidence`` and ``chosen`` (the index of the model's choice) (NaN otherwise), under
    an optional intervention (``sklens.scanning.choices``).
    ``metric`` is a sklens metric, a callable, or ``"loss"``/``"confidence"``.

    Args:
        model: the model.
        prompt: the trained soft prompt, or None for the plain model.
        examples: the examples to evaluate.
        metric: a sklens metric, a callable, or ``"loss"``/``"confidence"``.
        intervention: an edit of units active during the pass (``sklens.ablated``), or None.
        batch_size: examples per forward pass.

    Returns:
        One row per example."""
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

    Args:
        model: the model.
        prompt: the trained soft prompt, or None for the plain model.
        examples: the reference examples the means are taken over.
        layers: the model layers to read.
        positions: ``"slots"`` (position-matched), ``"all"``, or a position mask.
        batch_size: examples per forward pass.
        site: the units' site (default MLP neurons).

    Returns:
        ``(means, mean_abs)``: each a dict from layer to a tensor.
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


def causal_check(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: NeuronLike,
    *,
    metric: MetricLike = "loss",
    modes: Sequence[str] | str = ("zero", "mean"),
    n_random: int = 10,
    seed: int = 0,
    positions: str | None = None,
    group_by: str | None = None,
    match_scale: bool = True,
    strata: Mapping[int, Tensor] | None = None,
    positive: NeuronLike | str | None = None,
    reference: Sequence[Example] | None = None,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = True,
    site: SiteLike | None = None,
    parts: str | os.PathLike | None = None,
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
        strata: a stratum label per unit and layer (``sklens.causal.controls.score_strata``):
            each random unit is drawn from its selected unit's stratum.
        positive: a positive control edited like the others, set ``positive`` in the table:
            ``"layers"`` (every unit of the selected layers) or a unit set (e.g. an
            attribution's ``top_k`` table).
        reference: examples for ``mean`` ablation (per-slot means) and scale matching (default:
            ``examples``; a split disjoint from the neurons' selection set is cleaner).
        parts: a folder where each set's pass is saved as it finishes (``sklens.parts``): a
            check run again with it reuses the sets whose units, examples, prompt and settings
            match, so a killed check goes on from its last set; the table is the same.
        mode_options: passed to the interventions (``noise_std``, ``factor``, ``shift``).

    Returns one row per (mode, set, group) with ``n``, mean changes ``d_metric``, ``d_loss``,
    ``d_accuracy`` (argmax of total log-probability) and ``d_accuracy_per_token`` (argmax of mean
    per-token log-probability), their bootstrap 95% intervals (``*_lo``, ``*_hi``), the baseline
    accuracies, ``match_scale``, ``choice_changed``, ``prompt_effect_loss``, and on the selected
    and positive rows ``p_metric``, ``p_loss``, ``p_accuracy``, ``p_accuracy_per_token``:
    two-sided rank p-values against the random sets' changes around their median (smallest
    possible ``1/(n_random+1)``), with ``mde_*``, ``excess_*`` and ``bound_*`` (module docstring).
    """
    examples, modes = _checked(model, prompt, examples, modes, n_random, group_by)
    positions = positions or ("slots" if prompt is not None else "all")
    selected = nonempty(NeuronSet.of(neurons, model, site=site))
    control = positive_set(selected, positive, model) if positive is not None else None
    means = scale = None
    if "mean" in modes or match_scale:  # every edited layer's means: the control's too
        layers = sorted({*selected.layers, *(control.layers if control is not None else ())})
        reference = list(reference) if reference is not None else examples
        means, scale = neuron_stats(model, prompt, reference, layers, positions=positions,
                                    batch_size=batch_size, site=selected.site)  # fmt: skip
    sets = _sets(model, selected, n_random, seed, scale if match_scale else None, strata)
    if control is not None:
        sets["positive"] = control
    base, unprompted = _unedited(model, prompt, examples, metric, batch_size)
    changes = Changes(base, _groups(examples, group_by), match_scale, n_boot, seed, unprompted)
    passes = _SetPasses.of(parts, model, prompt, examples, reference, metric=metric,
                           positions=positions, means=means, seed=seed, batch_size=batch_size,
                           options=mode_options)  # fmt: skip
    bar = tqdm(total=len(modes) * len(sets), desc="causal check", disable=not progress)
    for mode in modes:
        for name, chosen in sets.items():
            changes.add(mode, name, len(chosen), passes(mode, name, chosen))
            bar.update(1)
    bar.close()
    return changes.table()


@dataclass
class _SetPasses:
    """A check's edited passes, one over the examples per (mode, set); with ``parts`` each is
    saved as it finishes and read back in a later check instead of computed again."""

    model: Model
    prompt: SoftPrompt | None
    examples: list[Example]
    metric: MetricLike
    positions: Any
    means: dict[int, Tensor] | None
    seed: int
    batch_size: int
    options: Mapping[str, Any]
    store: Parts | None

    @classmethod
    def of(
        cls,
        parts: str | os.PathLike | None,
        model: Model,
        prompt: SoftPrompt | None,
        examples: list[Example],
        reference: Sequence[Example] | None,
        **settings: Any,
    ) -> _SetPasses:
        """The passes, with the store of ``parts`` keyed by everything besides the set that
        determines an edited pass: the model, the prompt's vectors, the examples, the metric,
        where it edits, the reference of the means, the seed, the batching and the options."""
        context = {
            "model": model.cfg.model_name,
            "prompt": None if prompt is None else prompt.forward(),
            "examples": content_hash(examples),
            "reference": content_hash(reference or examples),
            **{k: v for k, v in settings.items() if k != "means"},
            "metric": getattr(settings["metric"], "name", str(settings["metric"])),
        }
        return cls(model, prompt, examples, **settings, store=Parts.of(parts, context))

    def __call__(self, mode: str, name: str, chosen: NeuronSet) -> pd.DataFrame:
        piece = (f"{mode}-{name}", [mode, chosen.site.name, chosen.pairs])
        edited = self.store.load(*piece) if self.store is not None else None
        if edited is None:
            edit = NeuronIntervention(
                self.model, chosen, mode, positions=self.positions, means=self.means,
                seed=self.seed, **self.options,
            )  # fmt: skip
            edited = evaluate(
                self.model, self.prompt, self.examples, metric=self.metric, intervention=edit,
                batch_size=self.batch_size,
            )  # fmt: skip
            if self.store is not None:
                self.store.save(*piece, edited)
        return edited


def _unedited(
    model: Model,
    prompt: SoftPrompt | None,
    examples: list[Example],
    metric: MetricLike,
    batch_size: int,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The unedited model's evaluation, and without the prompt (the prompt's own effect, the
    scale of the edits' effects; None on a plain model)."""
    base = evaluate(model, prompt, examples, metric=metric, batch_size=batch_size)
    if prompt is None:
        return base, None
    return base, evaluate(model, None, examples, metric=metric, batch_size=batch_size)


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
    strata: Mapping[int, Tensor] | None,
) -> dict[str, NeuronSet]:
    """The sets a causal check edits, by their name in its table: ``selected``, then
    ``random_0`` ... (``random_sets``, matched in ``scale`` and ``strata`` where given)."""
    sets = {"selected": NeuronSet.of(selected.by_layer(), site=selected.site)}
    drawn_sets = random_sets(model, selected, n_random, seed=seed, scale=scale, strata=strata)
    for r, drawn in enumerate(drawn_sets):
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


def dose_response(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    ranked: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    ks: Sequence[int] = (1, 2, 5, 10),
    mode: AblationMode = "zero",
    n_random: int = 5,
    **kwargs: Any,
) -> pd.DataFrame:
    """The causal check of the top-``k`` units of each ranking for each k: does the effect grow
    with k, and faster for one ranking (the scan's, the attribution's) than for random units?

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt (None: no prompt).
        examples: examples that neither trained the prompt nor selected the units.
        ranked: a ``top_k`` table (``Scan.top_k``, ``Attribution.top_k``) with at least
            ``max(ks)`` rows, best first; or several by name, e.g. ``{"correlation": ...,
            "attribution": ...}``.
        ks: the set sizes to ablate.
        mode: the ablation mode (``sklens.causal.ablate``).
        n_random: random sets per k and ranking, matched in layers (and scale, by default).
        **kwargs: passed to ``causal_check`` (``metric``, ``reference``, ``match_scale``, ...).

    Returns:
        ``causal_check``'s table for every ranking and k, with ``ranking`` and ``k`` columns
        (``figures.dose_response`` draws it).
    """
    rankings = {"ranking": ranked} if isinstance(ranked, pd.DataFrame) else dict(ranked)
    for name, table in rankings.items():
        if max(ks) > len(table):
            raise ValueError(f"k={max(ks)} exceeds the {len(table)} units of ranking {name!r}")
    parts = []
    for name, table in rankings.items():
        for k in ks:
            part = causal_check(
                model, prompt, examples, table.head(k), modes=(mode,), n_random=n_random, **kwargs
            )
            parts.append(part.assign(ranking=name, k=k))
    return pd.concat(parts, ignore_index=True)
