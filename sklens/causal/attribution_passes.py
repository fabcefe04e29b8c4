"""The passes behind ``sklens.attribute`` (``sklens.causal.attribution``, whose module doc
describes the estimators): the rows a metric scores, the batches, the hooks that open a gradient
at every layer's slot units of a site, the AtP and IG estimators, the streaming sums of the
effects, and the values units are ablated to (0, the slot mean, or the edited twin's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.causal.check import neuron_stats
from sklens.data.example import Example
from sklens.data.format import Batch, Encoded, encode, split_batch
from sklens.models import _compat
from sklens.models.protocol import Model
from sklens.prompt.forward import (
    CompletionLogprobs,
    batched_pass,
    completion_logprobs,
    gather_slots,
    prefill,
)
from sklens.prompt.soft_prompt import SlotWriter, SoftPrompt
from sklens.prompt.training import train_logprobs
from sklens.scanning.choices import expand_choices
from sklens.stats import distributed
from sklens.units.sites import Site

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

# (layer, clean units at each row's slots (R, k, units), each row's example) -> ablated values
Ablated = Callable[[int, Tensor, Tensor], Tensor]


class SlotPaths:
    """Hooks at the site's every layer that add, at each row's slots, a zero ``delta`` to the
    units whose gradient is ``∂M/∂u`` there, and on an IG path ``α·d`` to the units of the
    current group.

    The units are the site's (``Site.units`` of the activation at the slots) and the shifted
    units are written back with ``Site.write``, from the units as computed on the pass (not
    detached), so what flows through the hook from earlier layers keeps flowing: for MLP
    neurons this is ``a + delta``; for an SAE it adds ``decode(u + delta) − decode(u)`` (the
    error term stays, the model is the real one). A pass with ``alpha=None`` (AtP, or IG's
    clean pass) records ``d = ablated − clean`` from the units it sees; a pass with ``record``
    (an edited twin's, ``TwinUnits``) only keeps the units it sees there, editing nothing. The
    hooks leave the pass over the text before the slots alone (the prompt's writer is paused
    there) and read where the slots are from the writer; ``begin`` is told each row's example
    (``rows``).
    """

    def __init__(
        self, writer: SlotWriter, site: Site, layers: list[int], n_slots: int, ablated: Ablated
    ):
        self.writer, self.site, self.layers = writer, site, layers
        self.n_slots, self.ablated = n_slots, ablated
        self.alpha: float | None = None
        self.moved: dict[int, Tensor] = {}  # layer -> [slot, unit] bool: the units on the path
        self.rows = torch.empty(0, dtype=torch.long)  # each row's example
        self.deltas: dict[int, Tensor] = {}
        self.d: dict[int, Tensor] = {}  # layer -> ablated − clean at the slots (R, k, units)
        self.record: dict[int, Tensor] | None = None  # layer -> units seen (R, k, units)

    def hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [(self.site.hook(L), self._hook(L)) for L in self.layers]

    def begin(
        self,
        alpha: float | None = None,
        moved: dict[int, Tensor] | None = None,
        rows: Tensor | None = None,
        record: dict[int, Tensor] | None = None,
    ) -> None:
        """Before a pass: the clean point (``None``; ``rows``: each row's example), ``alpha``
        along the path of the units ``moved``, or a pass whose units go into ``record``."""
        self.alpha, self.moved, self.deltas, self.record = alpha, moved or {}, {}, record
        if rows is not None:
            self.rows = rows

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(act: Float[Tensor, "batch pos *site"], hook: Any) -> Tensor:
            if not self.writer.active:  # the pass over the text before the slots
                return act
            rows = torch.arange(act.shape[0], device=act.device)[:, None]  # (R, 1)
            start = self.writer.slot_start.to(act.device)
            pos = start[:, None] + torch.arange(self.n_slots, device=act.device)  # (R, k)
            at_slots = act[rows, pos]  # (R, k, *site)
            units = self.site.units(at_slots, layer)  # (R, k, units)
            if self.record is not None:
                self.record[layer] = units.detach()
                return act
            delta = torch.zeros_like(units.detach()).requires_grad_(torch.is_grad_enabled())
            self.deltas[layer] = delta
            if self.alpha is None:
                clean = units.detach()
                self.d[layer] = self.ablated(layer, clean, self.rows) - clean
                shift = delta
            else:
                moved = self.moved[layer].to(act.device, units.dtype)  # (k, units)
                shift = delta + self.alpha * moved * self.d[layer]
            every = torch.arange(units.shape[-1], device=act.device)
            written = self.site.write(at_slots, layer, units, every, units + shift)
            return act.index_put((rows, pos), written)

        return hook


# -- the estimators ------------------------------------------------------------------------------


def gauss_legendre(steps: int) -> tuple[list[float], list[float]]:
    """``steps`` Gauss–Legendre nodes and weights on [0, 1]: exact for an integrand polynomial
    of degree ``2·steps − 1`` in α, where a uniform rule of as many points is exact to degree 1."""
    x, w = np.polynomial.legendre.leggauss(steps)
    return ((x + 1) / 2).tolist(), (w / 2).tolist()


def unit_groups(
    n_layers: int, n_slots: int, n_units: int, groups: int, seed: int = 0
) -> Int[Tensor, "layer slot unit"]:
    """Each unit's IG group: a site's units (MLP neurons, heads, ...) are dealt at random
    (seeded) into ``groups`` groups, and a unit at slot ``k`` goes ``k`` groups further on.
    Every group holds ~``1/groups`` of the units of every layer and slot, and one neuron's
    slots, which write the same ``W_out`` row into the residual stream and so interact most,
    never share a path (``groups ≥ slots``)."""
    n = n_layers * n_units
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    base = torch.empty(n, dtype=torch.long)
    base[perm] = torch.arange(n) % groups
    base = base.view(n_layers, 1, n_units)
    return (base + torch.arange(n_slots)[None, :, None]) % groups


@dataclass
class RowBatch:
    """One batch of examples: its rows (``order``), each row's example numbered within the
    batch (``owner``) and each example's answer row within the batch (``correct``)."""

    examples: list[int]
    order: list[int]
    owner: Tensor
    correct: Tensor

    @property
    def row_examples(self) -> Int[Tensor, " rows"]:
        """Each row's example, numbered among all the examples."""
        return torch.tensor(self.examples, dtype=torch.long)[self.owner]


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


class TwinUnits:
    """``ablation=pairs`` for ``attribute``, streamed: before each batch a pass without
    gradients over the batch's edited twins, through the same hooks (``SlotPaths`` recording),
    keeps the twins' units at the slots for that batch only, so memory does not grow with the
    number of pairs. Called as an ``Ablated``: each row's twin's units."""

    def __init__(self, model: Model, twins: list[Example], n_slots: int):
        self.model = model
        self.rows = metric_rows(model, twins, n_slots, "loss")  # one row per twin
        self.values: dict[int, Tensor] = {}  # layer -> the batch's twins' units (B, k, units)
        self.first = 0  # the batch's first example

    def read(self, paths: SlotPaths, batch: RowBatch) -> None:
        """The twins of ``batch``'s examples (consecutive, from ``batch.examples[0]``)."""
        self.values, self.first = {}, batch.examples[0]
        paths.begin(rows=torch.tensor(batch.examples), record=self.values)
        with torch.no_grad():
            Scorer(self.model, paths.writer, self.rows, batch.examples)()
        paths.begin()  # recording ends with the pass

    def __call__(self, layer: int, clean: Tensor, rows: Tensor) -> Tensor:
        return self.values[layer][(rows - self.first).cpu()].to(clean)


def gradients(paths: SlotPaths, score: Scorer, batch: RowBatch, metric: str) -> dict[int, Tensor]:
    """One forward and backward pass over the batch's rows; the summed metric's gradient at
    every layer's slots, ``(R, k, units)`` per layer."""
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
    groups: Tensor | None = None  # [layer, slot, unit] group ids over the site's layers (ig)
    n_groups: int = 1

    @property
    def passes(self) -> int:
        """Forward passes per batch (each with a backward but IG's clean pass)."""
        return 1 if self.name == "atp" else 1 + self.steps * self.n_groups


def row_effects(
    model: Model, paths: SlotPaths, rows: Rows, batch: RowBatch, metric: str, method: Method
) -> dict[int, Tensor]:
    """Each row's estimated effect at every slot unit, ``(R, k, units)`` per layer: the
    gradient at the clean point (AtP), or its Gauss–Legendre mean along the path of the unit's
    group (IG), times ``d``."""
    score = Scorer(model, paths.writer, rows, batch.order)
    paths.begin(rows=batch.row_examples)
    if method.name == "atp":
        grads = gradients(paths, score, batch, metric)
        return {L: g * paths.d[L] for L, g in grads.items()}
    with torch.no_grad():  # the clean pass: d
        score()
    mean_grad = {L: torch.zeros_like(d) for L, d in paths.d.items()}
    for group in range(method.n_groups):
        moved = {L: method.groups[j] == group for j, L in enumerate(paths.layers)}  # (k, units)
        for alpha, weight in zip(*gauss_legendre(method.steps), strict=True):
            paths.begin(alpha, moved)
            for L, g in gradients(paths, score, batch, metric).items():
                mean_grad[L] += (weight * g) * moved[L].to(g.device, g.dtype)
    return {L: g * paths.d[L] for L, g in mean_grad.items()}


class Sums:
    """Per-example effects folded into float64 sums and sums of squares per unit, one row of
    ``[layer, unit, slot]`` per layer of ``layers`` (the site's)."""

    def __init__(self, layers: list[int], n_units: int, n_slots: int):
        shape = (len(layers), n_units, n_slots)
        self.index = {L: j for j, L in enumerate(layers)}
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sq = torch.zeros(shape, dtype=torch.float64)
        self.n = 0

    def fold(self, layer: int, per_example: Float[Tensor, "examples slot unit"]) -> None:
        x = per_example.detach().double().cpu()
        self.sum[self.index[layer]] += x.sum(0).T
        self.sq[self.index[layer]] += x.square().sum(0).T

    def merge_ranks(self) -> None:
        """Sum the sums over the ranks of a data-parallel run (each example on one rank): the
        effects are means, so they merge like the scan's moments (``sklens.stats.distributed``)."""
        n = torch.tensor([float(self.n)], dtype=torch.float64)
        merged = distributed.sum_over_ranks({0: self.sum, 1: self.sq, 2: n})
        self.sum, self.sq, self.n = merged[0], merged[1], int(merged[2].item())

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


# -- the ablated values --------------------------------------------------------------------------


class _SlotUnits:
    """Reads the site's units at every slot of each example of a ``batched_pass``
    (``values[layer]``: ``[example, slot, unit]``, float32 on the CPU)."""

    def __init__(self, site: Site, layers: list[int], n_examples: int, n_slots: int):
        self.site = site
        self.values = {L: torch.zeros(n_examples, n_slots, site.size) for L in layers}
        self.batch: Batch | None = None

    def start(self, batch: Batch) -> None:
        self.batch = batch

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(L), self._reader(L)) for L in self.values]

    def _reader(self, layer: int) -> Any:
        def read(act: Float[Tensor, "batch pos *site"], hook: Any) -> None:
            units = self.site.units(gather_slots(act, self.batch), layer)  # (B, k, units)
            self.values[layer][torch.tensor(self.batch.indices)] = units.float().cpu()

        return read


def ablated_values(
    model: Model,
    prompt: SoftPrompt,
    site: Site,
    layers: list[int],
    ablation: str,
    among: list[Example],
    batch_size: int,
) -> Ablated:
    """What a unit is set to: 0; its position-matched mean over ``among`` at each slot
    (``sklens.neuron_stats``, as the causal check's ``mean`` ablation; in a data-parallel run
    ``among`` is this rank's share, and the means are merged over the ranks); or (``"pairs"``:
    ``among`` are the edited twins, one per example) its value on the example's twin at that
    slot."""
    if ablation == "zero":
        return lambda layer, clean, rows: torch.zeros_like(clean)
    if ablation == "mean":
        means, _ = neuron_stats(model, prompt, among, layers, batch_size=batch_size, site=site)
        means = distributed.mean_over_ranks(means, len(among))
        by_layer = {L: m.T.contiguous() for L, m in means.items()}  # (k, units)
        return lambda layer, clean, rows: by_layer[layer].to(clean).expand_as(clean)
    reader = _SlotUnits(site, layers, len(among), prompt.n_slots)
    encoded = encode(model, among, prompt.n_slots)
    for _ in batched_pass(
        model, encoded, prompt.n_slots, [prompt.writer(), reader], batch_size=batch_size,
        stop_after=site.hook(max(layers)),
    ):  # fmt: skip
        pass
    return lambda layer, clean, rows: reader.values[layer][rows.cpu()].to(clean)
