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

from sklens.slot_buffer import Block


@dataclass
class Extremes:
    """``values``/``rows`` ``[layers, d_mlp, slot, n]``: the ``n`` largest activations of each
    (layer, unit, slot), largest first, and their example ids; ``low_values``/``low_rows`` the
    ``n`` smallest, smallest first. An id of -1 is an empty place (fewer than ``n`` examples)."""

    values: Float[Tensor, "layers d_mlp slot n"]
    rows: Int[Tensor, "layers d_mlp slot n"]
    low_values: Float[Tensor, "layers d_mlp slot n"]
    low_rows: Int[Tensor, "layers d_mlp slot n"]

    @classmethod
    def empty(cls, shape: tuple[int, int, int], n: int, device: torch.device | str) -> Extremes:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        full = (*shape, n)

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
        return self.values.shape[-1]

    def take(self, block: Block) -> None:
        """Merge a block of layer ``block.layer``'s activations into the kept extremes."""
        j = block.layer
        n_layers, d_mlp, n_slots, n = self.values.shape
        acts = (block.centred.double() + block.shift).float().T  # (units, rows)
        ids = block.rows.to(acts.device).expand(len(acts), -1)
        for values, rows, largest in (
            (self.values, self.rows, True),
            (self.low_values, self.low_rows, False),
        ):
            kept_v = values[j].view(-1, n)
            both_v = torch.cat([kept_v, acts], 1)
            both_i = torch.cat([rows[j].view(-1, n), ids], 1)
            best_v, where = both_v.topk(n, dim=1, largest=largest, sorted=True)
            values[j] = best_v.view(d_mlp, n_slots, n)
            rows[j] = both_i.gather(1, where).view(d_mlp, n_slots, n)

    def of(self, j: int, unit: int, slot: int, n: int | None = None) -> tuple[list[int], list[int]]:
        """The most and least activating example ids of (scanned layer ``j``, ``unit``, ``slot``),
        ``n`` of each at most; the least leave out any already among the most (as when there are
        fewer than ``2n`` examples)."""
        most = [i for i in self.rows[j, unit, slot, :n].tolist() if i >= 0]
        least = [i for i in self.low_rows[j, unit, slot, :n].tolist() if i >= 0 and i not in most]
        return most, least

    def tensors(self) -> dict[str, Tensor]:
        return {f"extremes.{k}": getattr(self, k).cpu().contiguous() for k in self._names()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Extremes:
        return cls(**{k: tensors.pop(f"extremes.{k}") for k in cls._names()})

    @staticmethod
    def _names() -> tuple[str, ...]:
        return ("values", "rows", "low_values", "low_rows")
