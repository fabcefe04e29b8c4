"""Exact patching, the reference that attribution (``sklens.causal.attribution``) is checked against.

For unit ``(L, i, k)`` (unit ``i`` of the site at layer ``L``, slot ``k``) and every example, the
model runs with that unit replaced at the example's slot ``k`` by its ablated value (0, its mean
over the examples at that slot, or its value on the example's edited twin), written back with the
site's ``write`` and everything downstream recomputed, and the example's metric is compared with
the unedited run's. One forward pass per (unit, example), no gradients: each row of a batch is
one (example, unit) pair (rows never interact), so a batch patches several units at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Float64
from torch import Tensor

from sklens.causal.attribution import _check
from sklens.causal.attribution_passes import Ablated, metric_rows
from sklens.data.example import Example
from sklens.data.format import Batch
from sklens.models.protocol import Model
from sklens.prompt.forward import batched_pass
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.units.sites import Site, SiteLike

Unit = tuple[int, int, int]  # (layer, unit, slot)


class _UnitPatch:
    """Forward hooks that set each row's own unit (``unit_of[row]``, ``None``: no edit) to its
    ablated value at the row's slot (``example_of[row]``: the row's example, for ``ablated``).
    A part of the batched pass (``sklens.prompt.forward.BatchPart``)."""

    def __init__(
        self, site: Site, unit_of: list[Unit | None], example_of: list[int], ablated: Ablated
    ):
        self.site, self.unit_of, self.example_of, self.ablated = site, unit_of, example_of, ablated
        self.batch: Batch | None = None

    def start(self, batch: Batch) -> None:
        self.batch = batch

    def hooks(self) -> list[tuple[str, Any]]:
        layers = sorted({u[0] for u in self.unit_of if u is not None})
        return [(self.site.hook(L), self._hook(L)) for L in layers]

    def _hook(self, layer: int) -> Any:
        def patch(act: Float[Tensor, "batch pos *site"], hook: Any) -> Tensor:
            edits = [
                (b, u, self.example_of[i])
                for b, i in enumerate(self.batch.indices)
                if (u := self.unit_of[i]) is not None and u[0] == layer
            ]
            if not edits:
                return act
            rows = torch.tensor([b for b, _, _ in edits], device=act.device)
            unit = torch.tensor([u[1] for _, u, _ in edits], device=act.device)
            slot = torch.tensor([u[2] for _, u, _ in edits], device=act.device)
            pos = self.batch.slot_positions.to(act.device)[rows]  # (n, k)
            at_slots = act[rows[:, None], pos]  # (n, k, *site)
            units = self.site.units(at_slots, layer)  # (n, k, units)
            examples = torch.tensor([e for _, _, e in edits], dtype=torch.long)
            value = self.ablated(layer, units, examples)  # (n, k, units)
            picked = torch.arange(len(edits), device=act.device)
            new = units.index_put((picked, slot, unit), value[picked, slot, unit])
            every = torch.arange(units.shape[-1], device=act.device)
            written = self.site.write(at_slots, layer, units, every, new)
            return act.index_put((rows[:, None], pos), written)

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
    site: SiteLike = "mlp",
    ablation: str | Sequence[Any] = "mean",  # or the pairs of sklens.edits.pairs (checked)
    batch_size: int = 8,
    progress: bool = False,
) -> Float64[Tensor, "unit example"]:
    """The change of each example's metric when each unit alone is ablated at its slot.

    ``units`` are ``(layer, unit, slot)`` triples of ``site``; the row mean of the result is a
    unit's exact effect on the mean metric (``Attribution.layer_effect(layer)[unit, slot]``
    estimates it). Sites, metrics and ablations (``"mean"``, ``"zero"``, the pairs of
    ``sklens.edits.pairs``) as ``sklens.attribute``; ``batch_size`` counts rows per pass.
    """
    checked = _check(model, prompt, examples, metric, site, "atp", 1, 1, ablation, batch_size)
    examples, name = checked.examples, checked.metric
    base = metric_rows(model, examples, prompt.n_slots, name)
    variants: list[Unit | None] = [None, *(tuple(int(x) for x in u) for u in units)]
    encoded, unit_of, example_of, where = [], [], [], {}  # where[(variant, base row)] -> row
    for v, unit in enumerate(variants):
        for r, enc in enumerate(base.encoded):
            where[v, r] = len(encoded)
            encoded.append(enc)
            unit_of.append(unit)
            example_of.append(base.owner[r])
    ablated = checked.ablated(model, prompt, batch_size)
    total = torch.empty(len(encoded), dtype=torch.float64)
    mean_loss = torch.empty(len(encoded), dtype=torch.float64)
    parts = [prompt.writer(), _UnitPatch(checked.site, unit_of, example_of, ablated)]
    passes = batched_pass(
        model, encoded, prompt.n_slots, parts, batch_size=batch_size, logprobs=True,
        progress=progress, desc="exact patching",
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
