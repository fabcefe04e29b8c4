"""The most and least activating examples of every unit, kept while the scan runs.

The scan sees every example's activation at every (layer, unit, slot) once. Keeping the running
``n`` largest and ``n`` smallest of them, with the examples' ids, makes the extremal examples
of any unit a lookup after the scan — ``examples.csv``, ``top_examples`` and the views need no
second pass over the examples; a view re-runs only the few examples it shows.

They are merged once per ``SlotBuffer`` block (one top-k per layer over ``n + block`` columns).
Memory: ``2 · layers · d_mlp · slots · n · 12`` bytes (float32 value and int64 example id, for the
largest and the smallest; n = 5 on SmolLM2-135M: 0.11 GB, on Qwen1.5-1.8B: 0.32 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.stats.slot_buffer import Block


@dataclass
class Extremes:
    """``values``/``rows`` ``[layers, n, slot, d_mlp]``: the ``n`` largest activations of each
    (layer, slot, unit), largest first along the second axis, and their example ids;
    ``low_values``/``low_rows`` the ``n`` smallest, smallest first. An id of -1 is an empty
    place (fewer than ``n`` examples)."""

    values: Float[Tensor, "layers n slot d_mlp"]
    rows: Int[Tensor, "layers n slot d_mlp"]
    low_values: Float[Tensor, "layers n slot d_mlp"]
    low_rows: Int[Tensor, "layers n slot d_mlp"]

    @classmethod
    def empty(cls, shape: tuple[int, int, int], n: int, device: torch.device | str) -> Extremes:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        n_layers, d_mlp, n_slots = shape
        full = (n_layers, n, n_slots, d_mlp)

        def ids() -> Tensor:
            return torch.full(full, -1, dtype=torch.long, device=device)

        return cls(
            torch.full(full, -torch.inf, device=device),
            ids(),
            torch.full(full, torch.inf, device=device),
            ids(),
        )

    @property
    def n(self) -> int:
        return self.values.shape[1]

    def take(self, block: Block) -> None:
        """Merge a block of layer ``block.layer``'s activations into the kept extremes: the
        block's own top ``n`` per unit (a top-k down its rows), then the merge of two ``n``."""
        j, n = block.layer, self.n
        if not len(block.rows):
            return
        shift = block.shift.float()
        ids = block.rows.to(block.centred.device)
        for values, rows, largest in (
            (self.values, self.rows, True),
            (self.low_values, self.low_rows, False),
        ):
            best, where = block.centred.topk(min(n, len(ids)), dim=0, largest=largest)
            kept_v, kept_i = values[j].flatten(1), rows[j].flatten(1)  # (n, units)
            both_v = torch.cat([kept_v, best + shift], 0)
            both_i = torch.cat([kept_i, ids[where]], 0)
            merged, pick = both_v.topk(n, dim=0, largest=largest)
            values[j] = merged.view(values[j].shape)
            rows[j] = both_i.gather(0, pick).view(rows[j].shape)

    def tensors(self) -> dict[str, Tensor]:
        return {f"extremes.{k}": getattr(self, k).cpu().contiguous() for k in self._names()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Extremes:
        return cls(**{k: tensors.pop(f"extremes.{k}") for k in cls._names()})

    @staticmethod
    def _names() -> tuple[str, ...]:
        return ("values", "rows", "low_values", "low_rows")
