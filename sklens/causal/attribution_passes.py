"""The passes behind ``sklens.attribute`` (``sklens.causal.attribution``, whose module doc
describes the estimators): the rows a metric scores, the batches, the hooks that open a gradient
at every layer's slot units, the AtP and IG estimators and the streaming sums of the effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.data.example import Example
from sklens.data.format import Batch, Encoded, encode, split_batch
from sklens.models import _compat
from sklens.models.protocol import Model
from sklens.prompt.forward import CompletionLogprobs, completion_logprobs, prefill
from sklens.prompt.soft_prompt import SlotWriter
from sklens.prompt.training import train_logprobs
from sklens.scanning.choices import expand_choices
from sklens.units.sites import MLP

# -- the metric ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The rows a metric scores: one per example, or one per choice for ``margin``.

    ``owner[r]`` is row ``r``'s example, ``correct[e]`` the row of example ``e``'s answer.
    """

    encoded: list[Encoded]
    owner: list[int]
    correct: list[int]
    by_example: list[list[int]]


def metric_rows(model: Model, examples: Sequence[Example], n_slots: int, metric: str) -> Rows:
    """Encode the rows ``metric`` scores (every choice of each question for ``margin``)."""
    if metric == "margin":
        rows, owner, correct = expand_choices(examples)
    else:
        ids = list(range(len(examples)))
        rows, owner, correct = list(examples), ids, ids
    by_example: list[list[int]] = [[] for _ in examples]
    for r, e in enumerate(owner):
        by_example[e].append(r)
    return Rows(encode(model, rows, n_slots), owner, correct, by_example)


def example_metric(
    metric: str,
    scores: CompletionLogprobs,
    owner: Int[Tensor, " rows"],
    correct: Int[Tensor, " examples"],
) -> Float[Tensor, " examples"]:
    """Per-example metric from the scored rows (``owner``: each row's example, numbered from 0
    within the batch; ``correct``: each example's answer row), differentiable."""
    if metric == "loss":
        return scores.mean_loss[correct]
    total = scores.total_logprob
    if metric == "logprob":
        return total[correct]
    is_answer = torch.zeros(len(owner), dtype=torch.bool, device=total.device)
    distractors = total.masked_fill(is_answer.index_fill(0, correct, True), -torch.inf)
    best = torch.full((len(correct),), -torch.inf, dtype=total.dtype, device=total.device)
    best = best.scatter_reduce(0, owner, distractors, reduce="amax")  # the best distractor's
    return total[correct] - best


# -- the hooks -----------------------------------------------------------------------------------

Ablated = Callable[[int, Tensor], Tensor]  # (layer, clean slot activations) -> ablated values


class SlotPaths:
    """``hook_post`` hooks at every layer that add, at each row's slots, a zero ``delta`` whose
    gradient is ``∂M/∂a`` there, and on an IG path ``α·d`` to the units of the current group.

    A pass with ``alpha=None`` (AtP, or IG's clean pass) records ``d = ablated − clean`` from the
    activations it sees. The hooks leave the pass over the text before the slots alone (the
    prompt's writer is paused there) and read where the slots are from the writer.
    """

    def __init__(self, writer: SlotWriter, n_layers: int, n_slots: int, ablated: Ablated):
        self.writer, self.n_layers, self.n_slots, self.ablated = writer, n_layers, n_slots, ablated
        self.alpha: float | None = None
        self.moved: Tensor | None = None  # [layer, slot, d_mlp] bool: the units on the path
        self.deltas: dict[int, Tensor] = {}
        self.d: dict[int, Tensor] = {}  # layer -> ablated − clean at the slots (R, k, d_mlp)

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(MLP.hook(L), self._hook(L)) for L in range(self.n_layers)]

    def begin(self, alpha: float | None = None, moved: Tensor | None = None) -> None:
        """Before a pass: the clean point (``None``), or ``alpha`` along the path of ``moved``."""
        self.alpha, self.moved, self.deltas = alpha, moved, {}

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(act: Float[Tensor, "batch pos d_mlp"], hook: Any) -> Tensor:
            if not self.writer.active:  # the pass over the text before the slots
                return act
            rows = torch.arange(act.shape[0], device=act.device)[:, None]  # (R, 1)
            start = self.writer.slot_start.to(act.device)
            pos = start[:, None] + torch.arange(self.n_slots, device=act.device)  # (R, k)
            delta = torch.zeros(
                (act.shape[0], self.n_slots, act.shape[-1]), dtype=act.dtype, device=act.device
            ).requires_grad_(torch.is_grad_enabled())
            self.deltas[layer] = delta
            if self.alpha is None:
                clean = act[rows, pos].detach()  # (R, k, d_mlp)
                self.d[layer] = self.ablated(layer, clean) - clean
                shift = delta
            else:
                moved = self.moved[layer].to(act.device, act.dtype)  # (k, d_mlp)
                shift = delta + self.alpha * moved * self.d[layer]
            return act.index_put((rows, pos), shift, accumulate=True)

        return hook


# -- the estimators ------------------------------------------------------------------------------


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """``steps`` Gauss–Legendre nodes and weights on [0, 1]: exact for an integrand polynomial
    of degree ``2·steps − 1`` in α, where a uniform rule of as many points is exact to degree 1."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return ((x + 1) / 2).tolist(), (w / 2).tolist()


def unit_groups(
    n_layers: int, n_slots: int, d_mlp: int, groups: int, seed: int = 0
) -> Int[Tensor, "layer slot d_mlp"]:
    """Each unit's IG group: neurons are dealt at random (seeded) into ``groups`` groups, and a
    neuron's unit at slot ``k`` goes ``k`` groups further on. Every group holds ~``1/groups`` of
    the neurons of every layer and slot, and one neuron's slots, which write the same ``W_out``
    row into the residual stream and so interact most, never share a path (``groups ≥ slots``)."""
    n = n_layers * d_mlp
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    base = torch.empty(n, dtype=torch.long)
    base[perm] = torch.arange(n) % groups
    base = base.view(n_layers, 1, d_mlp)
    return (base + torch.arange(n_slots)[None, :, None]) % groups


@dataclass
class RowBatch:
    """One batch of examples: its rows (``order``), each row's example numbered within the
    batch (``owner``) and each example's answer row within the batch (``correct``)."""

    examples: list[int]
    order: list[int]
    owner: Tensor
    correct: Tensor


def row_batches(rows: Rows, n_examples: int, batch_size: int) -> list[RowBatch]:
    out = []
    for start in range(0, n_examples, batch_size):
        chosen = list(range(start, min(start + batch_size, n_examples)))
        order = [r for e in chosen for r in rows.by_example[e]]
        local = {r: j for j, r in enumerate(order)}
        owner = torch.tensor([rows.owner[r] - start for r in order])
        correct = torch.tensor([local[rows.correct[e]] for e in chosen])
        out.append(RowBatch(chosen, order, owner, correct))
    return out


class Scorer:
    """Scores one batch's rows, pass after pass, with the prompt and the hooks attached.

    On a HookedTransformer the text before the slots runs once per batch, without autograd and
    with the prompt's writer paused (it cannot depend on a slot), and every pass continues from
    its frozen keys and values: ``training.train_logprobs`` split in two so that an IG batch's
    ``1 + steps·groups`` passes share the prefix. A TransformerBridge takes whole rows.
    """

    def __init__(self, model: Model, writer: SlotWriter, rows: Rows, order: list[int]):
        self.model, self.writer, self.rows, self.order = model, writer, rows, order
        self.rest: Batch | None = None
        self.cache: Any = None
        if not _compat.is_bridge(model):
            prefix, mask, self.rest = split_batch(model, rows.encoded, writer.prompt.n_slots, order)
            with writer.paused():
                self.cache = prefill(model, prefix, mask)
            self.cache.freeze()  # every pass reads it, none appends to it

    def __call__(self) -> CompletionLogprobs:
        if self.rest is None:
            return train_logprobs(self.model, self.writer, self.rows.encoded, self.order)
        self.writer.start(self.rest)
        return completion_logprobs(self.model, self.rest, past_kv_cache=self.cache)


def gradients(paths: SlotPaths, score: Scorer, batch: RowBatch, metric: str) -> dict[int, Tensor]:
    """One forward and backward pass over the batch's rows; the summed metric's gradient at
    every layer's slots, ``(R, k, d_mlp)`` per layer."""
    scores = score()
    device = scores.logprobs.device
    metric_sum = example_metric(metric, scores, batch.owner.to(device), batch.correct.to(device))
    layers = sorted(paths.deltas)
    grads = torch.autograd.grad(
        metric_sum.sum(), [paths.deltas[L] for L in layers], allow_unused=True
    )
    return {
        L: torch.zeros_like(paths.deltas[L]) if g is None else g
        for L, g in zip(layers, grads, strict=True)
    }


@dataclass(frozen=True)
class Method:
    """The estimator, parsed: ``atp``, or ``ig`` with its quadrature and unit groups."""

    name: str
    steps: int = 1
    groups: Tensor | None = None  # [layer, slot, d_mlp] group ids (ig)
    n_groups: int = 1

    @property
    def passes(self) -> int:
        """Forward passes per batch (each with a backward but IG's clean pass)."""
        return 1 if self.name == "atp" else 1 + self.steps * self.n_groups


def row_effects(
    model: Model, paths: SlotPaths, rows: Rows, batch: RowBatch, metric: str, method: Method
) -> dict[int, Tensor]:
    """Each row's estimated effect at every slot unit, ``(R, k, d_mlp)`` per layer: the
    gradient at the clean point (AtP), or its Gauss–Legendre mean along the path of the unit's
    group (IG), times ``d``."""
    score = Scorer(model, paths.writer, rows, batch.order)
    paths.begin()
    if method.name == "atp":
        grads = gradients(paths, score, batch, metric)
        return {L: g * paths.d[L] for L, g in grads.items()}
    with torch.no_grad():  # the clean pass: d
        score()
    mean_grad = {L: torch.zeros_like(d) for L, d in paths.d.items()}
    for group in range(method.n_groups):
        moved = method.groups == group  # (layer, k, d_mlp)
        for alpha, weight in zip(*gauss_legendre(method.steps), strict=True):
            paths.begin(alpha, moved)
            for L, g in gradients(paths, score, batch, metric).items():
                mean_grad[L] += (weight * g) * moved[L].to(g.device, g.dtype)
    return {L: g * paths.d[L] for L, g in mean_grad.items()}


class Sums:
    """Per-example effects folded into float64 sums and sums of squares per unit."""

    def __init__(self, n_layers: int, d_mlp: int, n_slots: int):
        shape = (n_layers, d_mlp, n_slots)
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sq = torch.zeros(shape, dtype=torch.float64)
        self.n = 0

    def fold(self, layer: int, per_example: Float[Tensor, "examples slot d_mlp"]) -> None:
        x = per_example.detach().double().cpu()
        self.sum[layer] += x.sum(0).T
        self.sq[layer] += x.square().sum(0).T

    def result(self) -> tuple[Tensor, Tensor]:
        """The mean effect and its standard error ``sqrt(s² / n)``, ``s²`` the sample variance."""
        mean = self.sum / self.n
        var = ((self.sq - self.n * mean.square()) / (self.n - 1)).clamp_min(0)
        return mean, (var / self.n).sqrt()


def fold(sums: Sums, batch: RowBatch, effects: dict[int, Tensor]) -> None:
    """Add each example's effects (the sum over its rows: the choices of a question share its
    slots) to the streaming sums."""
    for L, per_row in effects.items():
        per_row = per_row.detach()
        per_example = torch.zeros(
            (len(batch.examples), *per_row.shape[1:]), dtype=per_row.dtype, device=per_row.device
        ).index_add_(0, batch.owner.to(per_row.device), per_row)
        sums.fold(L, per_example)
    sums.n += len(batch.examples)
