"""Does the model behave differently on the examples that have a property? (``sklens.behaviour``)

A unit can only encode a shortcut the model takes if the model's behaviour depends on it at all;
the reverse does not hold (a unit can carry a property the model does not act on). So before a
reading such as "these neurons encode the last-digit shortcut", ask the model: its loss and its
multiple-choice accuracy (total and per-token log-probability, ``sklens.evaluate``) on each
group of a meta field, with bootstrap 95% intervals of each mean and, for two groups, of the
difference. A difference whose interval excludes 0 says the model behaves differently; one whose
interval includes 0 bounds how much it can (the interval's ends), and is no verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from sklens import validate
from sklens.causal.check import evaluate
from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.stats import bootstrap_ci

# evaluate's per-example columns, by the name reported
MEASURES = {
    "loss": "loss",
    "accuracy": "correct",
    "accuracy_per_token": "correct_per_token",
    "choice_confidence": "choice_confidence",
}
MIN_PER_GROUP = 2


def group_labels(examples: Sequence[Example], by: str) -> list[object]:
    """Each example's ``meta[by]``, refused with the fix where a field is missing or a group has
    fewer than two examples (a mean of one has no interval)."""
    missing = [i for i, e in enumerate(examples) if by not in e.meta]
    if missing:
        raise ValueError(
            f"{len(missing)} example(s) (first: {missing[0]}) have no meta field {by!r} to group "
            f"by; fields of the first example: {sorted(examples[0].meta) if examples else []}"
        )
    labels = [e.meta[by] for e in examples]
    counts = pd.Series([str(v) for v in labels]).value_counts()
    if len(counts) < 2 or counts.min() < MIN_PER_GROUP:
        raise ValueError(
            f"grouping by {by!r} needs two or more groups of at least {MIN_PER_GROUP} examples, "
            f"got {counts.to_dict()}; choose another field or more examples"
        )
    return labels


def behaviour(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    by: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
) -> pd.DataFrame:
    """The model's loss and accuracies on each group of ``meta[by]``, with intervals.

    Args:
        model: the model.
        prompt: the soft prompt it runs with, or None for the bare model.
        examples: the examples (multiple-choice ones also give the accuracies).
        by: the meta field whose values are the groups (e.g. ``"last_digit_decides"``).
        n_boot: bootstrap resamples of each interval.
        seed: the bootstrap's seed.
        batch_size: examples per forward pass.

    Returns:
        One row per (measure, group): ``measure``, ``group``, ``n``, ``mean``, ``lo``, ``hi``
        (95% percentile bootstrap); with two groups also a row per measure whose group is
        ``"difference"``: the first group's mean minus the second's (groups in sorted order),
        resampled jointly. A measure the examples cannot give (accuracy without choices) is
        left out. ``attrs["chance_accuracy"]`` is the mean of 1/choices where there are choices.
    """
    examples = list(examples)
    labels = np.array([str(v) for v in group_labels(examples, by)])
    validate.integer("n_boot", n_boot, minimum=10, meaning="bootstrap resamples")
    table = evaluate(model, prompt, examples, metric="loss", batch_size=batch_size)
    groups = sorted(set(labels))
    rows = []
    for measure, column in MEASURES.items():
        values = table[column].to_numpy(dtype=float)
        if np.isnan(values).all():
            continue
        for group in groups:
            v = values[(labels == group) & ~np.isnan(values)]
            lo, hi = bootstrap_ci(np.mean, v, n_boot=n_boot, seed=seed)
            rows.append({"measure": measure, "group": group, "n": len(v), "mean": v.mean(),
                         "lo": lo, "hi": hi})  # fmt: skip
        if len(groups) == 2:
            rows.append(_difference(measure, values, labels == groups[0], n_boot, seed))
    out = pd.DataFrame(rows)
    choices = [len(e.meta["choices"]) for e in examples if e.meta.get("choices")]
    out.attrs["chance_accuracy"] = float(np.mean([1 / c for c in choices])) if choices else None
    out.attrs["groups"] = f"{by}: {groups[0]} minus {groups[-1]}" if len(groups) == 2 else by
    return out


def _difference(
    measure: str, values: np.ndarray, first: np.ndarray, n_boot: int, seed: int
) -> dict[str, object]:
    """The first group's mean minus the second's, with its bootstrap interval."""
    keep = ~np.isnan(values)
    values, first = values[keep], first[keep]

    def diff(v: np.ndarray, f: np.ndarray) -> float:
        f = f.astype(bool)
        return float(v[f].mean() - v[~f].mean()) if f.any() and (~f).any() else float("nan")

    lo, hi = bootstrap_ci(diff, values, first, n_boot=n_boot, seed=seed)
    return {"measure": measure, "group": "difference", "n": len(values),
            "mean": diff(values, first), "lo": lo, "hi": hi}  # fmt: skip
