"""Deterministic train/validation splits."""

from __future__ import annotations

import random
from collections.abc import Sequence

from sklens.data.example import Example


def train_val_split(
    examples: Sequence[Example], n_val: int | float = 0.4, *, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and cut: ``n_val`` examples (or that fraction) go to validation."""
    examples = list(examples)
    k = round(len(examples) * n_val) if isinstance(n_val, float) else int(n_val)
    if not 0 < k < len(examples):
        raise ValueError(
            f"n_val={n_val} leaves no train or no validation examples of {len(examples)}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[k:]], [examples[i] for i in order[:k]]
