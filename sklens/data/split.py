"""Deterministic train/validation splits."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def train_val_split(
    items: Sequence[T], n_val: int | float = 0.4, *, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Shuffle with ``seed`` and cut: ``n_val`` items (or that fraction) go to validation."""
    items = list(items)
    k = round(len(items) * n_val) if isinstance(n_val, float) else int(n_val)
    if not 0 < k < len(items):
        raise ValueError(f"n_val={n_val} leaves no train or no validation examples of {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[k:]], [items[i] for i in order[:k]]
