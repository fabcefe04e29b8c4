"""Slot activations of a block of examples, held so the work that spans examples runs once per
block instead of once per batch.

The permutation null (``sklens.stats.permutation``) and the running extremal examples
(``sklens.stats.extremes``) both need every example's activation at every (layer, unit, slot). Folded
batch by batch they read and write their whole state each batch (``[layers, d_mlp, slots, B]``
for the null); folded once per block of ``capacity`` examples the null is one matrix product per
layer with ``capacity`` as its inner dimension, and the extremes one top-k.

Each layer's activations are stored centred on a fixed per-layer ``shift`` (the first batch's
mean, float64), as float32 ``[capacity, slots · d_mlp]`` in ``(slot, unit)`` order, as the
hooks hand them over (a max over the slots is then an element-wise max of contiguous rows): the
centring keeps float32 accurate when activations carry a large offset. Memory is
``4 · layers · d_mlp · slots · capacity`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Block:
    """Layer ``layer``'s held activations: ``centred[i] = activation of example rows[i] − shift``."""

    layer: int
    centred: Float[Tensor, "rows units"]
    rows: Int[Tensor, " rows"]
    shift: Float[Tensor, " units"]


@runtime_checkable
class BlockSink(Protocol):
    """What takes a full block (the permutation null, the extremes)."""

    def take(self, block: Block) -> None: ...


class SlotBuffer:
    """Up to ``capacity`` examples' centred slot activations per layer; full blocks go to
    ``sinks``; what is left stays readable (``held``) until ``flush``."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        capacity: int,
        sinks: Sequence[BlockSink],
        device: torch.device | str = "cpu",
    ):
        n_layers, d_mlp, n_slots = shape
        self.capacity, self.sinks = capacity, list(sinks)
        self.data = torch.empty(n_layers, capacity, d_mlp * n_slots, device=device)
        self.rows: list[list[int]] = [[] for _ in range(n_layers)]
        self.shift: list[Tensor | None] = [None] * n_layers
        self.n_flushed = [0] * n_layers

    def fold_layer(
        self, j: int, acts: Float[Tensor, "batch slots d_mlp"], rows: Sequence[int]
    ) -> None:
        """Hold one batch of layer ``j``; a full buffer goes to the sinks first."""
        if len(acts) > self.capacity:
            raise ValueError(f"a batch of {len(acts)} does not fit a buffer of {self.capacity}")
        a = acts.to(self.data.device, torch.float64).flatten(1)  # (b, k·d), slot-major
        if self.shift[j] is None:
            self.shift[j] = a.mean(0)
        if len(self.rows[j]) + len(a) > self.capacity:
            self.flush(j)
        start = len(self.rows[j])
        self.data[j, start : start + len(a)] = (a - self.shift[j]).float()
        self.rows[j] += list(rows)

    def held(self, j: int) -> Block:
        """Layer ``j``'s activations not yet given to the sinks."""
        rows = self.rows[j]
        shift = self.shift[j]
        if shift is None:
            shift = torch.zeros(self.data.shape[2], dtype=torch.float64, device=self.data.device)
        return Block(j, self.data[j, : len(rows)], torch.tensor(rows, dtype=torch.long), shift)

    def flush(self, j: int) -> None:
        """Give layer ``j``'s held activations to every sink and empty it."""
        if not self.rows[j]:
            return
        block = self.held(j)
        for sink in self.sinks:
            sink.take(block)
        self.n_flushed[j] += 1
        self.rows[j] = []
