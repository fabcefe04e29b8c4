"""Steering curves: scale (or shift) the selected units by a range of factors and measure the
metric, the loss and the accuracy, beside random units of the same layers at the same factors.

A unit that matters should move behaviour more than random units as its activation is pushed
further; a curve that tracks the random sets' band says the effect is one of editing that many
units at all. Each factor is ``sklens.causal_check`` with mode ``scale`` (``factor``) or
``shift`` (``shift``); the random sets are drawn once (the same seed, matched in activation scale
by default) and reused at every factor, so the curves are comparable point by point. Factor 1 of
``scale`` and 0 of ``shift`` are the unedited model: every change there is 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from sklens.causal.check import causal_check
from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.metrics import MetricLike
from sklens.units.neuron_set import NeuronLike

DEFAULT_FACTORS = (-1.0, 0.0, 0.5, 1.0, 2.0, 4.0)


def steering_curve(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: NeuronLike,
    *,
    factors: Sequence[float | int] = DEFAULT_FACTORS,
    mode: str = "scale",  # "scale" or "shift"; checked below, naming the two
    metric: MetricLike = "loss",
    n_random: int = 10,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """``causal_check``'s table at every factor, with a ``factor`` column (one row per factor,
    set and group).

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt (None: no prompt).
        examples: examples that neither trained the prompt nor selected the units.
        neurons: the units to steer (any ``NeuronSet`` form, e.g. a ``top_k`` table).
        factors: multipliers (``scale``) or additive shifts (``shift``) of the activation.
        mode: ``"scale"`` or ``"shift"``.
        metric: the metric whose change is measured besides loss and accuracy.
        n_random: random sets of the same size and layers, drawn once for every factor.
        seed: seeds the random sets and the bootstrap.
        batch_size: examples per forward pass.
        progress: show tqdm bars.
        **kwargs: passed to ``causal_check`` (``positions``, ``match_scale``, ``reference``,
            ``group_by``, ``n_boot``).
    """
    if mode not in ("scale", "shift"):
        raise ValueError(f"mode must be 'scale' or 'shift', got {mode!r}")
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Iterable):
        raise TypeError(
            f"factors must be a sequence of numbers, got {type(factors).__name__} {factors!r}: "
            "e.g. factors=(0, 2)"
        )
    factors = [_number(f) for f in factors]
    if not factors or not all(math.isfinite(f) for f in factors):
        raise ValueError(f"factors must be one or more finite numbers, got {factors}")
    if n_random < 1:
        raise ValueError(f"a steering curve needs random sets to compare with: n_random={n_random}")
    parts = []
    for factor in factors:
        option = {"factor": factor} if mode == "scale" else {"shift": factor}
        table = causal_check(
            model, prompt, examples, neurons, metric=metric, modes=(mode,), n_random=n_random,
            seed=seed, batch_size=batch_size, progress=progress, **option, **kwargs,
        )  # fmt: skip
        parts.append(table.assign(factor=factor))
    return pd.concat(parts, ignore_index=True)


def _number(factor: Any) -> float:
    """One factor as a float; text and bools are refused (``float("2")`` would pass)."""
    if not isinstance(factor, (str, bytes, bool)):
        try:
            return float(factor)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"factors must be numbers, got {factor!r}: e.g. factors=(0, 2)")
