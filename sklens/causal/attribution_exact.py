"""Exact patching, the reference that attribution (``sklens.causal.attribution``) is checked against.

For unit ``(L, i, k)`` and every example, the model runs with neuron ``i`` of
``blocks.L.mlp.hook_post`` replaced at the example's slot ``k`` by its ablated value (0, or its
mean over the examples at that slot), everything downstream recomputed, and the example's metric
is compared with the unedited run's. One forward pass per (unit, example), no gradients: each
row of a batch is one (example, unit) pair (rows never interact), so a batch patches several
units at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Float64
from torch import Tensor

from sklens.causal.attribution import _check
from sklens.causal.attribution_passes import metric_rows
from sklens.causal.check import neuron_stats
from sklens.data.example import Example
from sklens.data.format import Batch
from sklens.models.protocol import Model
from sklens.prompt.forward import batched_pass
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.units.sites import MLP

Unit = tuple[int, int, int]  # (layer, neuron, slot)


class _UnitPatch:
    """Forward hooks that set each row's own unit (``unit_of[row]``, ``None``: no edit) to its
    ablated value at the row's slot. A part of the batched pass (``sklens.prompt.forward.BatchPart``)."""

    def __init__(self, unit_of: list[Unit | None], values: dict[int, Tensor] | None):
        self.unit_of, self.values = unit_of, values  # values: per layer [d_mlp, n_slots], or 0
        self.batch: Batch | None = None

    def start(self, batch: Batch) -> None:
        self.batch = batch

    def hooks(self) -> list[tuple[str, Any]]:
        layers = sorted({u[0] for u in self.unit_of if u is not None})
        return [(MLP.hook(L), self._hook(L)) for L in layers]

    def _hook(self, layer: int) -> Any:
        def patch(act: Float[Tensor, "batch pos d_mlp"], hook: Any) -> Tensor:
            edits = [
                (b, u)
                for b, i in enumerate(self.batch.indices)
                if (u := self.unit_of[i]) is not None
            ]
            edits = [(b, u) for b, u in edits if u[0] == layer]
            if not edits:
                return act
            rows = torch.tensor([b for b, _ in edits], device=act.device)
            neurons = torch.tensor([u[1] for _, u in edits], device=act.device)
            slots = torch.tensor([u[2] for _, u in edits], device=act.device)
            pos = self.batch.slot_start.to(act.device)[rows] + slots
            if self.values is None:
                new = torch.zeros(len(edits), dtype=act.dtype, device=act.device)
            else:
                new = self.values[layer].to(act.device, act.dtype)[neurons, slots]
            return act.index_put((rows, pos, neurons), new)

        return patch


def _metric(name: str, total: Tensor, mean_loss: Tensor, rows: list[int], answer: int) -> float:
    """One example's metric from its scored rows (``answer``: the answer's row among them)."""
    if name == "loss":
        return float(mean_loss[answer])
    if name == "logprob":
        return float(total[answer])
    return float(total[answer] - max(float(total[r]) for r in rows if r != answer))


def exact_effects(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    units: Sequence[Unit],
    metric: str = "loss",
    *,
    ablation: str = "mean",
    batch_size: int = 8,
    progress: bool = False,
) -> Float64[Tensor, "unit example"]:
    """The change of each example's metric when each unit alone is ablated at its slot.

    ``units`` are ``(layer, neuron, slot)`` triples; the row mean of the result is a unit's
    exact effect on the mean metric (``Attribution.effect[layer, neuron, slot]`` estimates it).
    Metrics and ablations as ``sklens.attribute``; ``batch_size`` counts rows per pass.
    """
    examples, name = _check(
        model, prompt, examples, metric, "mlp", "atp", 1, 1, ablation, batch_size
    )
    n_slots = prompt.n_slots
    base = metric_rows(model, examples, n_slots, name)
    variants: list[Unit | None] = [None, *(tuple(int(x) for x in u) for u in units)]
    encoded, unit_of, where = [], [], {}  # where[(variant, base row)] -> row
    for v, unit in enumerate(variants):
        for r, enc in enumerate(base.encoded):
            where[v, r] = len(encoded)
            encoded.append(enc)
            unit_of.append(unit)
    values = None
    if ablation == "mean":
        layers = sorted({u[0] for u in variants if u is not None})
        values, _ = neuron_stats(model, prompt, examples, layers, batch_size=batch_size)
    total = torch.empty(len(encoded), dtype=torch.float64)
    mean_loss = torch.empty(len(encoded), dtype=torch.float64)
    parts = [prompt.writer(), _UnitPatch(unit_of, values)]
    passes = batched_pass(
        model, encoded, n_slots, parts, batch_size=batch_size, logprobs=True, progress=progress,
        desc="exact patching",
    )  # fmt: skip
    for batch, scores in passes:
        total[batch.indices] = scores.total_logprob.double().cpu()
        mean_loss[batch.indices] = scores.mean_loss.double().cpu()
    out = torch.empty(len(variants), len(examples), dtype=torch.float64)
    for v in range(len(variants)):
        for e, own in enumerate(base.by_example):
            rows = [where[v, r] for r in own]
            out[v, e] = _metric(name, total, mean_loss, rows, where[v, base.correct[e]])
    return out[1:] - out[0]
