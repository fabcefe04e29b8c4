"""RQ3's questions beyond the scan: does the model use the last-digit shortcut, what does the
paper's manual step show, and which properties of a question explain the top loss neurons?

* ``behaviour`` — loss and multiple-choice accuracy (total and per-token log-probability,
  ``sklens.evaluate``) on multiplications with and without ``last_digit_decides``, with
  bootstrap 95% intervals of each mean and of the difference. A model that uses the shortcut
  answers the shortcut questions better; a neuron can only encode a shortcut the model uses.
* ``manual_step`` — the paper's: the ten selection-set questions that activate the top neuron
  least (``sklens.top_examples``), and how many are multiplications the shortcut decides.
* ``property_ranking`` — for each candidate explanation (operation, answer length, the shortcut,
  "the answer is the only negative choice", ...), how much of the top neurons' activation it
  explains on held-out questions: η² for groups (binary ones included, where η² is the squared
  point-biserial r), ρ² (Spearman) for numbers, plus AUROC for binary properties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

import sklens
from sklens.stats import bootstrap_ci
from sklens.stats.measures import auroc, eta_squared, spearman


def _numbers(example: sklens.Example) -> list[int]:
    return [int(c) for c in example.meta["choices"] if str(c).lstrip("-").isdigit()]


def only_negative_choice(example: sklens.Example) -> bool:
    """The answer is negative and no other numeric choice is (a giveaway for subtractions)."""
    answer = int(example.meta["answer"]) if str(example.meta["answer"]).lstrip("-").isdigit() else 0
    return answer < 0 and sum(x < 0 for x in _numbers(example)) == 1


def answer_length(example: sklens.Example) -> int:
    """Digits in the answer (the loss is a mean over its tokens, so length matters)."""
    return len(str(example.meta["answer"]).lstrip("-"))


# name -> (kind, value function, which questions it applies to)
PROPERTIES: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], bool]]] = {
    "operation": ("groups", lambda e: e.meta["operation"], lambda e: True),
    "digits": ("number", lambda e: e.meta["digits"], lambda e: True),
    "answer_length": ("number", answer_length, lambda e: True),
    "is_multiplication": (
        "binary",
        lambda e: e.meta["operation"] == "multiplication",
        lambda e: True,
    ),
    "answer_negative": ("binary", lambda e: str(e.meta["answer"]).startswith("-"), lambda e: True),
    "only_negative_choice": ("binary", only_negative_choice, lambda e: True),
    "last_digit_decides": ("binary", lambda e: e.meta["last_digit_decides"], lambda e: True),
    "last_digit_decides (multiplications)": (
        "binary",
        lambda e: e.meta["last_digit_decides"],
        lambda e: e.meta["operation"] == "multiplication",
    ),
    "last_digit_unique (+, -, ×)": (
        "binary",
        lambda e: e.meta["last_digit_unique"],
        lambda e: e.meta["last_digit_unique"] is not None,
    ),
}


def _mean_ci(values: np.ndarray, seed: int) -> dict[str, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    lo, hi = bootstrap_ci(lambda v: float(v.mean()), values, seed=seed)
    return {"mean": float(values.mean()), "lo": lo, "hi": hi}


def _difference(values: np.ndarray, flag: np.ndarray, seed: int) -> dict[str, float]:
    """Mean with the shortcut minus mean without, and its bootstrap interval."""

    def diff(v: np.ndarray, f: np.ndarray) -> float:
        f = f.astype(bool)
        return float(v[f].mean() - v[~f].mean()) if f.any() and (~f).any() else float("nan")

    lo, hi = bootstrap_ci(diff, values, flag, seed=seed)
    return {"mean": diff(values, flag), "lo": lo, "hi": hi}


def behaviour(
    model: Any,
    prompt: Any,
    examples: Sequence[sklens.Example],
    *,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loss and accuracies on multiplications with vs without the shortcut (see module doc)."""
    mults = [e for e in examples if e.meta["operation"] == "multiplication"]
    flag = np.array([bool(e.meta["last_digit_decides"]) for e in mults])
    if len(mults) < 4 or flag.all() or not flag.any():
        return {"n": len(mults), "note": "too few multiplications of each kind to compare"}
    table = sklens.evaluate(model, prompt, mults, metric="loss", batch_size=batch_size)
    out: dict[str, Any] = {
        "n_shortcut": int(flag.sum()),
        "n_no_shortcut": int((~flag).sum()),
        "chance_accuracy": float(np.mean([1 / len(e.meta["choices"]) for e in mults])),
    }
    for column in ("loss", "correct", "correct_per_token", "choice_confidence"):
        values = table[column].to_numpy(dtype=float)
        out[column] = {
            "shortcut": _mean_ci(values[flag], seed),
            "no_shortcut": _mean_ci(values[~flag], seed),
            "difference": _difference(values, flag, seed),
        }
    per_token = out["correct_per_token"]["difference"]
    loss = out["loss"]["difference"]
    out["uses_shortcut"] = bool(per_token["lo"] > 0 or loss["hi"] < 0)
    return out


def manual_step(
    model: Any, prompt: Any, examples: Sequence[sklens.Example], top: pd.DataFrame, n: int = 10
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The ``n`` least activating examples of the top neuron, and what they share."""
    first = top.iloc[0]
    least = sklens.top_examples(
        model,
        prompt,
        examples,
        layer=int(first.layer),
        neuron=int(first.neuron),
        slot=int(first.slot),
        n=n,
        largest=False,
    )
    shortcut = least["meta.last_digit_decides"].astype(bool)  # meta fields are meta.* columns
    operation = least["meta.operation"]
    counts = {
        "n": len(least),
        "n_multiplication": int((operation == "multiplication").sum()),
        "n_last_digit_decides": int(shortcut.sum()),
        "operations": operation.value_counts().to_dict(),
        "base_rate_last_digit_decides": float(
            np.mean([bool(e.meta["last_digit_decides"]) for e in examples])
        ),
    }
    return least, counts


def property_ranking(
    model: Any,
    prompt: Any,
    examples: Sequence[sklens.Example],
    top: pd.DataFrame,
    *,
    batch_size: int = 8,
) -> pd.DataFrame:
    """One row per (property, neuron): the measure and the variance it explains; see module doc."""
    examples = list(examples)
    acts = sklens.slot_activations(model, prompt, examples, top, batch_size=batch_size)
    picked = acts[:, torch.arange(len(top)), torch.tensor(top.slot.to_numpy())].double()
    rows = []
    for name, (kind, value, applies) in PROPERTIES.items():
        keep = [i for i, e in enumerate(examples) if applies(e)]
        labels = [value(examples[i]) for i in keep]
        if len(set(labels)) < 2 or min(labels.count(v) for v in set(labels)) < 2:
            continue  # constant here (e.g. one digit count), or a class of one
        a = picked[keep]
        if kind == "number":
            rho = spearman(a, torch.tensor(labels, dtype=torch.float64))
            measure, explained = rho, rho**2
        else:
            explained = eta_squared(a, labels)
            measure = (
                auroc(a, torch.tensor(labels, dtype=torch.float64))
                if kind == "binary"
                else explained
            )
        for j, neuron in enumerate(top.itertuples()):
            rows.append(
                {
                    "property": name,
                    "kind": kind,
                    "n": len(keep),
                    "layer": neuron.layer,
                    "neuron": neuron.neuron,
                    "slot": neuron.slot,
                    "measure": {"number": "spearman", "binary": "auroc", "groups": "eta_squared"}[
                        kind
                    ],
                    "value": float(measure[j]),
                    "explained": float(explained[j]),
                }
            )
    return pd.DataFrame(rows)


def rank_properties(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Properties ordered by the mean variance they explain over the top neurons."""
    summary = (
        rows.groupby(["property", "kind", "measure", "n"])
        .agg(
            mean_explained=("explained", "mean"),
            max_explained=("explained", "max"),
            top_neuron_value=("value", "first"),
        )
        .reset_index()
        .sort_values("mean_explained", ascending=False)
    )
    return summary.to_dict(orient="records")
