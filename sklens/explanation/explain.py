"""Ranked explanations of selected units, tested on held-out examples.

The paper's last step is manual: read the examples that activate a neuron least and guess the
shortcut. ``explain`` does it as a test. For each unit it measures every candidate property
(``sklens.explanation.hypotheses``: meta fields, surface properties of the instruction, token n-grams) against
the unit's activation at its slot **on examples that did not select it**, and ranks them:

* a binary property: AUROC of the activation for it, with a bootstrap 95% interval and the
  Mann–Whitney p-value;
* a numeric property: Spearman's ρ, its Fisher-z interval and p-value;
* a multi-valued field as a whole: η², a bootstrap interval, the Kruskal–Wallis p-value;
* an n-gram: its log odds of appearing among the ``top_fraction`` most against the
  ``top_fraction`` least activating examples, Woolf's interval, Fisher's exact p-value.

Every p-value of the table (all units, all hypotheses) gets a Benjamini–Hochberg q-value
together, so under a metric of pure noise nothing passes ``q < alpha`` with probability about
``1 − alpha``. Rows are ranked within a unit by passing first, then ``strength``, then by kind
(meta before surface before n-gram, so a meta field and the token that marks it tie in the
field's favour). ``strength`` is one scale for every kind: the share of the variance of the
activation's ranks that the property explains, as its root — |Spearman's ρ| for a number, and
√(H/(n − 1)) (Kruskal–Wallis H, the ranks' η) for a group, a field of several values or an
n-gram's presence. A separation measure such as |2·AUROC − 1| would not do: it rates a property
that singles out 7 of 160 examples perfectly (1.0) above one that splits them in half almost
perfectly, although it explains far less of how the activation varies (a perfectly separated
group of 7 in 160 explains η ≈ 0.35; a balanced split at AUROC 0.95, η ≈ 0.78).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from sklens.data.example import Example
from sklens.explanation.hypotheses import KINDS, Hypothesis, candidate_hypotheses
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.activations import at_selected_slot, require_slots, slot_activations
from sklens.stats.inference import q_values
from sklens.stats.measures import eta_squared, kruskal_wallis, ranks_and_ties
from sklens.stats.rank_tests import (
    bootstrap_effects,
    fisher_exact,
    log_odds,
    mann_whitney,
    spearman_test,
)
from sklens.units import sites
from sklens.units.neuron_set import NeuronLike

COLUMNS = (
    "label", "layer", "unit", "slot", "rank", "hypothesis", "kind", "measure", "effect", "lo",
    "hi", "p", "q", "passes", "strength", "n",
)  # fmt: skip


@dataclass
class Explanations:
    """``table``: one row per (unit, hypothesis), best first within each unit (``COLUMNS``:
    ``label`` reads ``L3 N5 @slot2``, ``sites.unit_slot_label`` of ``layer``, ``unit`` and
    ``slot``); ``summary``: one line per unit; ``skipped``: properties that could not be tested,
    and why."""

    table: pd.DataFrame
    summary: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    alpha: float = 0.05

    def best(self) -> pd.DataFrame:
        """Each unit's top-ranked row."""
        return self.table[self.table["rank"] == 1].reset_index(drop=True)

    def save(self, path: str | Path) -> Path:
        """Write the table as CSV (the summary lines are ``summary_lines`` of it)."""
        path = Path(path)
        self.table.to_csv(path, index=False)
        return path

    def __str__(self) -> str:
        return "\n".join(self.summary)


def explain(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: NeuronLike,
    *,
    fields: Sequence[str] | None = None,
    surface: bool = True,
    ngrams: Sequence[int] = (1, 2),
    min_count: int = 5,
    top_fraction: float = 0.25,
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> Explanations:
    """Rank candidate explanations of each selected unit's activation on held-out examples.

    Args:
        model: the model the units were selected on.
        prompt: the soft prompt they were selected with.
        examples: held-out examples (at least 10), none of them used to select the units; any
            of the examples a ``Scan.top_k`` table came from is refused (compared by
            instruction and completion; a table read back from a file cannot be checked, and
            gets a warning).
        neurons: a ``Scan.top_k`` table (its ``slot`` column is each unit's slot).
        fields: the meta fields to test (default: all of them).
        surface: test surface properties of the instruction.
        ngrams: the n-gram orders to test (``()`` for none).
        min_count: the fewest examples on each side of a binary property.
        top_fraction: the share of most and of least activating examples an n-gram's
            enrichment compares.
        alpha: the level of the Benjamini–Hochberg q-values that pass.
        n_boot: bootstrap resamples of the AUROC and η² intervals.
        seed: seeds the bootstrap.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.
    """
    arguments.model(model)
    arguments.prompt(prompt, optional=False)
    examples = arguments.examples(examples)
    _check(examples, neurons, top_fraction, alpha)
    arguments.held_out(examples, neurons, "explain")
    acts = slot_activations(
        model, prompt, examples, neurons, batch_size=batch_size, progress=progress
    )
    hypotheses, skipped = candidate_hypotheses(
        model.tokenizer, examples, fields=fields, surface=surface, ngrams=ngrams,
        min_count=min_count,
    )  # fmt: skip
    return explain_activations(
        at_selected_slot(acts, neurons), neurons, hypotheses, skipped=skipped,
        top_fraction=top_fraction, alpha=alpha, n_boot=n_boot, seed=seed,
    )  # fmt: skip


def _check(examples: list[Example], neurons: NeuronLike, top_fraction: float, alpha: float) -> None:
    require_slots(neurons, "explain")
    if len(examples) < 10:
        raise ValueError(f"explain needs at least 10 held-out examples, got {len(examples)}")
    if not 0 < top_fraction <= 0.5:
        raise ValueError(f"top_fraction must be in (0, 0.5], got {top_fraction}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def rank_eta(acts: Float[Tensor, "n units"], groups: list[int]) -> Float[Tensor, " units"]:
    """The root of the share of the activation ranks' variance that ``groups`` explain,
    √(H/(n − 1)) with the tie-corrected Kruskal–Wallis H; for two groups, the |Spearman ρ| of
    the activation with the group indicator."""
    return _eta_of(kruskal_wallis(acts, groups)[0], acts.shape[0])


def _eta_of(h: Float[Tensor, " units"], n: int) -> Float[Tensor, " units"]:
    """√(H/(n − 1)): the ranks' η from a tie-corrected Kruskal–Wallis H over ``n`` examples."""
    return (h / (n - 1)).clamp(0, 1).sqrt()


def _ngram_rows(
    acts: Float[Tensor, "n units"],
    present: np.ndarray,
    top_fraction: float,
    order: np.ndarray,
) -> list[tuple[float, float, float, float, float]]:
    """Per unit: (log odds, lo, hi, Fisher p, strength) of presence among the most against the
    least activating ``top_fraction`` of examples; the strength is the rank η of presence on all
    the examples, the scale the other kinds are ranked on."""
    n = acts.shape[0]
    m = max(1, math.ceil(top_fraction * n))
    strength = rank_eta(acts, present.astype(np.int64).tolist())
    out = []
    for j in range(acts.shape[1]):
        low, high = present[order[:m, j]], present[order[-m:, j]]
        a, c = int(high.sum()), int(low.sum())
        b, d = m - a, m - c
        value, lo, hi = log_odds(a, b, c, d)
        out.append((value, lo, hi, fisher_exact(a, b, c, d), float(strength[j])))
    return out


def _rows(
    acts: Float[Tensor, "n units"],
    h: Hypothesis,
    top_fraction: float,
    n_boot: int,
    seed: int,
    ranked: dict[bytes, Any],
) -> list[tuple[float, float, float, float, float, int]]:
    """Per unit: (effect, lo, hi, p, strength, n) of one hypothesis on the examples it knows.
    ``ranked`` caches the ranks of the activations by the examples they keep."""
    known = torch.from_numpy(h.known)
    a = acts[known].double()
    n = int(known.sum())
    values = h.values[h.known]
    key = h.known.tobytes()
    if key not in ranked:
        ranked[key] = (ranks_and_ties(a), torch.argsort(a, dim=0, stable=True).numpy())
    (ranks, order) = ranked[key]
    if h.measure == "log_odds":
        return [(*row, n) for row in _ngram_rows(a, values, top_fraction, order)]
    if h.measure == "auroc":
        x = torch.from_numpy(values.astype(bool))
        effect, p = mann_whitney(a, x, ranks)
        lo, hi = bootstrap_effects(a, x, "auroc", n_boot=n_boot, seed=seed)
        strength = rank_eta(a, x.long().tolist())
    elif h.measure == "spearman":
        effect, p, lo_t, hi_t = spearman_test(a, torch.from_numpy(values.astype(np.float64)))
        lo, hi, strength = lo_t.numpy(), hi_t.numpy(), effect.abs()
    else:
        codes = torch.from_numpy(values.astype(np.int64))
        groups = codes.tolist()
        effect = eta_squared(a, groups)
        h, p = kruskal_wallis(a, groups)  # one H: the p-value and the strength
        lo, hi = bootstrap_effects(a, codes, "eta_squared", n_boot=n_boot, seed=seed)
        strength = _eta_of(h, n)
    return [
        (float(effect[j]), float(lo[j]), float(hi[j]), float(p[j]), float(strength[j]), n)
        for j in range(a.shape[1])
    ]


def explain_activations(
    acts: Float[Tensor, "n_examples n_units"],
    neurons: pd.DataFrame,
    hypotheses: Sequence[Hypothesis],
    *,
    skipped: dict[str, str] | None = None,
    top_fraction: float = 0.25,
    alpha: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> Explanations:
    """``explain``'s ranking from activations already read: ``acts[i, j]`` is unit ``j``'s
    (row ``j`` of ``neurons``) activation on held-out example ``i``."""
    if acts.shape[1] != len(neurons):
        raise ValueError(f"{acts.shape[1]} activation columns for {len(neurons)} units")
    records, ranked = [], {}
    for h in hypotheses:
        if len(h.values) != acts.shape[0]:
            raise ValueError(
                f"hypothesis {h.name!r} has {len(h.values)} values for {acts.shape[0]} examples"
            )
        for j, row in enumerate(_rows(acts, h, top_fraction, n_boot, seed, ranked)):
            records.append((j, h.name, h.kind, h.measure, *row))
    table = pd.DataFrame(
        records,
        columns=["j", "hypothesis", "kind", "measure", "effect", "lo", "hi", "p", "strength", "n"],
    ).astype({"j": int})  # typed also when no hypothesis could be tested (a tiny split)
    table["q"] = q_values(table["p"].to_numpy(), "bh") if len(table) else []
    table["passes"] = table["q"] < alpha
    table["kind_order"] = table["kind"].map({k: i for i, k in enumerate(KINDS)})
    table["tie"] = table["strength"].round(9)  # the same ranks computed two ways tie exactly
    table = table.sort_values(
        ["j", "passes", "tie", "kind_order"], ascending=[True, False, False, True],
        kind="stable", na_position="last",
    )  # fmt: skip
    table["rank"] = table.groupby("j").cumcount() + 1
    units = neurons.reset_index(drop=True)
    for name in ("layer", "unit", "slot"):
        table[name] = units[name].to_numpy()[table["j"].to_numpy()].astype(int)
    table["site"] = np.array(sites.site_names(units), dtype=object)[table["j"].to_numpy()]
    table["label"] = [
        sites.unit_slot_label(*x)
        for x in zip(table.site, table.layer, table.unit, table.slot, strict=True)
    ]
    table = table[list(COLUMNS)].reset_index(drop=True)
    return Explanations(table, summary_lines(table, units, alpha), dict(skipped or {}), alpha)


def _describe(row: pd.Series) -> str:
    name = "log odds (most vs least active)" if row.measure == "log_odds" else row.measure
    name = {"auroc": "AUROC", "spearman": "Spearman ρ", "eta_squared": "η²"}.get(name, name)
    return (
        f"{row.hypothesis}, held-out {name} {row.effect:.2f} [{row.lo:.2f}, {row.hi:.2f}], "
        f"q = {row.q:.2g}"
    )


def summary_lines(table: pd.DataFrame, units: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One line per unit: its best hypothesis if one passes, else that none does (and the
    strongest, marked as not passing)."""
    lines = []
    rows_of = zip(units.layer, units.unit, units.slot, sites.site_names(units), strict=True)
    for L, unit, slot, site in rows_of:
        label = sites.unit_slot_label(site, int(L), int(unit), int(slot))
        rows = table[table.label == label]
        if rows.empty:
            lines.append(f"{label}: no hypothesis could be tested")
        elif bool(rows.iloc[0].passes):
            lines.append(f"{label}: {_describe(rows.iloc[0])}")
        else:
            lines.append(
                f"{label}: none of {len(rows)} hypotheses passes q < {alpha:g}; strongest "
                f"{_describe(rows.iloc[0])}"
            )
    return lines
