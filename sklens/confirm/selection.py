"""Two checks of what a scan selected: is a selected unit privileged by the neuron basis, and
would the same examples, resampled, select it again?

**The basis test** (``basis_test``; Gurnee et al.'s rotation baseline). A unit's |r| with the
metric is compared with what any direction of its layer reaches: for each unit's (layer, slot) one
pass streams the covariance of the layer's whole activation vector ``x`` (``d`` units of the
unit's site) with itself and with the metric ``y``, and from it alone (no second pass) the r of any
direction ``v`` is ``v·c / sqrt(v·Σv · var(y))``. ``n_rotations`` Haar-random orthogonal bases
each give their best |r| over their ``d`` directions; a unit whose |r| a random basis's best
direction matches or beats is not privileged: the metric is linearly readable from the layer, but
the neuron axis is not where it lives. Beside it, the best linear probe of the layer at that slot:
ridge regression fitted on one half of the examples, its penalty chosen by generalised
cross-validation on that half, and its Pearson r with the metric measured on the other half.

**Selection stability** (``selection_stability``). The share of bootstrap resamples of the examples
in which each of a scan's top-k units stays in the top-k, recomputed from the activations of the
scan's best ``n_candidates`` units read in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sklens import validate
from sklens.data.example import Example, data_hash
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass, gather_slots
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics
from sklens.scanning.activations import require_slots, slot_activations
from sklens.scanning.metrics import Metric, MetricLike
from sklens.scanning.result import Scan
from sklens.scanning.scan import values_before_pass
from sklens.stats.measures import batched_pearson
from sklens.stats.ranking import Reduce, check_rule, slot_scores
from sklens.units.neuron_set import NeuronSet, nonempty
from sklens.units.sites import Site
from sklens.vocabulary import MIN_BASIS_EXAMPLES

MIN_EXAMPLES = MIN_BASIS_EXAMPLES  # the probe fits on one half and is tested on the other
_RIDGE_GRID = 10.0 ** torch.linspace(-4, 4, 33, dtype=torch.float64)  # × a typical eigenvalue
_EIGEN_FLOOR = 1e-12  # eigenvalues below this share of the largest are rounding, not variance
_BLOCK = 1 << 23  # entries of one block of resampled activations (float64: 64 MB)

# -- covariances and the directions they score (model-free) ---------------------------------------


@dataclass(frozen=True)
class Covariance:
    """The population covariances of a vector ``x`` with itself (``xx``) and with a scalar ``y``
    (``xy``), and ``y``'s variance (``yy``), over ``n`` examples: all that the r of any direction
    of ``x`` with ``y`` needs."""

    xx: Float[Tensor, "d d"]
    xy: Float[Tensor, " d"]
    yy: float
    n: int

    def r(self, directions: Float[Tensor, "d m"]) -> Float[Tensor, " m"]:
        """Pearson r of ``y`` with ``x``'s projection on each column of ``directions``: ``v·c /
        sqrt(v·Σv · var(y))``; NaN for a direction along which ``x`` never varies."""
        variance = ((self.xx @ directions) * directions).sum(0)
        r = (directions.T @ self.xy) / (variance * self.yy).sqrt()
        return torch.where(variance > 0, r, torch.nan)


@dataclass(frozen=True)
class CrossMoments:
    """Streaming co-moments of ``x [d]`` and ``y`` in float64, each batch centred on its own mean
    and merged with Chan et al.'s pairwise update (as ``sklens.stats.moments`` does per unit), so
    a large offset in the activations costs no precision."""

    n: int
    mean_x: Float[Tensor, " d"]
    mean_y: float
    m_xx: Float[Tensor, "d d"]
    m_xy: Float[Tensor, " d"]
    m_yy: float

    @classmethod
    def zeros(cls, d: int) -> CrossMoments:
        """No example yet."""
        z = torch.zeros(d, dtype=torch.float64)
        return cls(0, z, 0.0, torch.zeros(d, d, dtype=torch.float64), z.clone(), 0.0)

    @classmethod
    def of(cls, x: Float[Tensor, "n d"], y: Float[Tensor, " n"]) -> CrossMoments:
        """The co-moments of one batch of examples (rows of ``x``)."""
        x, y = x.double(), y.double()
        xc, yc = x - x.mean(0), y - y.mean()
        return cls(len(y), x.mean(0), float(y.mean()), xc.T @ xc, xc.T @ yc, float(yc @ yc))

    def merge(self, other: CrossMoments) -> CrossMoments:
        """The co-moments of the union of two disjoint sets of examples."""
        if other.n == 0 or self.n == 0:
            return self if other.n == 0 else other
        n = self.n + other.n
        w = self.n * other.n / n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        return CrossMoments(
            n, self.mean_x + dx * (other.n / n), self.mean_y + dy * other.n / n,
            self.m_xx + other.m_xx + torch.outer(dx, dx) * w,
            self.m_xy + other.m_xy + dx * (dy * w), self.m_yy + other.m_yy + dy * dy * w,
        )  # fmt: skip

    def covariance(self) -> Covariance:
        """The population covariances (divided by ``n``)."""
        return Covariance(self.m_xx / self.n, self.m_xy / self.n, self.m_yy / self.n, self.n)


def haar_rotation(
    d: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal matrix (its columns are the basis's directions): the QR of a
    Gaussian matrix drawn from ``generator`` (on the CPU, so a seed gives the same matrix on any
    device), each column's sign set by ``R``'s diagonal, without which QR's sign convention
    biases the distribution (Mezzadri 2007)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64).to(device))
    return q * torch.sign(torch.diagonal(r))


def _sqrt_factor(xx: Float[Tensor, "d d"]) -> Float[Tensor, "rank d"]:
    """``F`` with ``FᵀF = xx`` over ``xx``'s non-negligible eigenvalues: ``v·Σv = |Fv|²`` costs
    ``rank·d`` per direction instead of ``d²`` (the rank is at most the examples, often ≪ d)."""
    s, u = torch.linalg.eigh(xx)
    keep = s > _EIGEN_FLOOR * max(float(s.max()), 0.0)
    return s[keep].sqrt()[:, None] * u[:, keep].T


def rotation_best(
    covariances: Sequence[Covariance],
    n_rotations: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Float[Tensor, "covariances n_rotations"]:
    """Each covariance's best |r| over the ``d`` directions of each of ``n_rotations`` random
    orthogonal bases: rotation ``b`` is the ``b``-th ``haar_rotation`` drawn from
    ``torch.Generator().manual_seed(seed)``, the same bases for every covariance (all of one
    ``d``). A direction along which ``x`` never varies counts as r = 0."""
    sizes = sorted({len(cov.xy) for cov in covariances})
    if len(sizes) != 1:
        raise ValueError(f"the covariances have sizes {sizes}: pass those of one d at a time")
    factors = [_sqrt_factor(cov.xx.to(device)) for cov in covariances]
    slopes = [cov.xy.to(device) for cov in covariances]
    generator = torch.Generator().manual_seed(seed)
    best = torch.empty(len(covariances), n_rotations, dtype=torch.float64, device=device)
    for b in range(n_rotations):
        q = haar_rotation(sizes[0], generator, device)
        for j, cov in enumerate(covariances):
            variance = (factors[j] @ q).square().sum(0)
            r = (slopes[j] @ q) / (variance * cov.yy).sqrt()
            best[j, b] = torch.where(variance > 0, r.abs(), 0.0).max()
    return best.cpu()


def ridge_probe(fit: Covariance, test: Covariance) -> tuple[float, float]:
    """The held-out r of the best ridge probe, and its penalty: ``w`` minimises ``|y − xw|² +
    λ|w|²`` on the ``fit`` examples (an intercept included), ``λ`` chosen among 33 values from
    1e-4 to 1e4 times the typical non-zero eigenvalue of ``fit``'s scatter matrix by generalised
    cross-validation (Golub, Heath & Wahba 1979: ``n·RSS / (n − 1 − tr H)²``, the rotation-
    invariant form of leave-one-out, which needs only the covariances); the r is Pearson's of
    ``x·w`` with ``y`` on the ``test`` examples. The penalty ``|w|²`` favours no basis, so neither
    does the probe; and a held-out r cannot reach 1 by fitting noise, as an in-sample fit with
    ``n ≤ d`` always does."""
    s, u = torch.linalg.eigh(fit.xx * fit.n)  # the scatter matrix XᵀX of the centred x
    s = s.clamp_min(0.0)
    a = u.T @ (fit.xy * fit.n)
    rank = int((s > _EIGEN_FLOOR * float(s.max())).sum())
    lambdas = _RIDGE_GRID.to(s.device) * float(s.sum()) / max(rank, 1)
    shrink = 1.0 / (s[None] + lambdas[:, None])  # [λ, d]
    rss = fit.yy * fit.n - (a.square() * (s + 2 * lambdas[:, None]) * shrink.square()).sum(1)
    spare = fit.n - 1 - (s * shrink).sum(1)  # residual degrees of freedom
    gcv = torch.where(spare > 0, fit.n * rss.clamp_min(0) / spare.square(), torch.inf)
    chosen = int(gcv.argmin())
    w = u @ (a * shrink[chosen])
    return float(test.r(w[:, None])[0]), float(lambdas[chosen])


# -- the basis test of a model's units -------------------------------------------------------------


@dataclass
class BasisTest:
    """Each unit's r against random bases' best directions and the layer's best probe
    (``sklens.basis_test``).

    ``table`` has one row per unit: ``layer``, ``unit``, ``slot``, ``r_unit`` (its r with the
    metric over all the examples: the scan's ``corr`` there, in-sample and so inflated by the
    selection), ``rotation_best_mean`` and ``rotation_best_q95`` (the mean and 95th percentile of
    the random bases' best |r|), ``p_rotation`` (``(1 + #{bases whose best |r| ≥ |r_unit|}) /
    (n_rotations + 1)``: small when the neuron basis is privileged), ``probe_r_heldout`` (the ridge
    probe's r on the half it was not fitted on) and ``n_examples``. ``rotation_best`` holds each
    row's random bases' best |r|; ``settings`` says how it was computed.
    """

    table: pd.DataFrame
    rotation_best: Float[Tensor, "units n_rotations"]
    settings: dict[str, Any]


@dataclass(frozen=True)
class _BasisPlan:
    """One basis test, checked and resolved before any pass: the examples encoded in the slot
    layout, the units, their distinct (layer, slot) pairs, which examples fit the probe, the
    metric and its values where known before the pass."""

    model: Model
    prompt: SoftPrompt
    examples: list[Example]
    encoded: list
    metric: Metric
    known: Float[Tensor, " n"] | None
    units: NeuronSet
    slots: list[int]
    pairs: list[tuple[int, int]]
    fit: Bool[Tensor, " n"]
    batch_size: int
    progress: bool


def _fit_half(n: int, seed: int) -> Bool[Tensor, " n"]:
    """A random half of ``n`` examples (``n // 2`` of them), which fit the probe."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit = torch.zeros(n, dtype=torch.bool)
    fit[order[: n // 2]] = True
    return fit


def _unit_slots(units: pd.DataFrame, n_slots: int) -> list[int]:
    """The ``slot`` of each row, refused outside the prompt's slots."""
    slots = [int(s) for s in units["slot"].to_numpy()]
    bad = [j for j, s in enumerate(slots) if not 0 <= s < n_slots]
    if bad:
        raise ValueError(
            f"row {bad[0]} of the units has slot {slots[bad[0]]}, but the prompt has slots "
            f"0..{n_slots - 1}: pass a top_k table of a scan with this prompt"
        )
    return slots


def _basis_plan(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
    units: Any,
    *,
    n_rotations: int,
    seed: int,
    batch_size: int,
    progress: bool,
) -> _BasisPlan:
    """Check ``basis_test``'s arguments, cheapest first and all before any pass; resolve the
    units and the metric, encode the examples, compute the metric's values where known before
    the pass."""
    arguments.model(model)
    arguments.prompt(prompt, optional=False)
    examples = arguments.examples(examples)
    table = require_slots(units, "basis_test")
    if len(examples) < MIN_EXAMPLES:
        raise ValueError(
            f"basis_test needs at least {MIN_EXAMPLES} examples (half fit the probe, half test "
            f"it), got {len(examples)}"
        )
    validate.integer("n_rotations", n_rotations, minimum=1, meaning="random bases")
    validate.integer("seed", seed)
    validate.integer("batch_size", batch_size, minimum=1)
    chosen = nonempty(NeuronSet.of(table, model))
    slots = _unit_slots(table, prompt.n_slots)
    prompt.check_fits(model)
    metric = metrics.resolve(metric, len(examples))
    metric.check(examples)
    encoded = encode(model, examples, prompt.n_slots)
    known = values_before_pass(model, prompt, examples, metric, batch_size)
    if known is not None:
        metrics.check_values(known, metric.name)
    pairs = sorted({(layer, s) for (layer, _), s in zip(chosen, slots, strict=True)})
    return _BasisPlan(
        model, prompt, examples, encoded, metric, known, chosen, slots, pairs,
        _fit_half(len(examples), seed), batch_size, progress,
    )  # fmt: skip


class _SlotVectors:
    """The site's whole unit vector of each needed (layer, slot) for the current batch of a
    ``batched_pass`` (``pending``, float64 on the CPU), kept until the batch's metric is known."""

    def __init__(self, site: Site, pairs: list[tuple[int, int]]):
        self.site = site
        self.slots: dict[int, list[int]] = {}
        for layer, slot in pairs:
            self.slots.setdefault(layer, []).append(slot)
        self.last_hook = site.hook(max(self.slots))
        self.batch: Batch | None = None
        self.pending: dict[tuple[int, int], Tensor] = {}

    def start(self, batch: Batch) -> None:
        self.batch, self.pending = batch, {}

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(layer), self._reader(layer)) for layer in self.slots]

    def _reader(self, layer: int) -> Any:
        def read(activation: Float[Tensor, "batch pos *site"], hook: Any) -> None:
            units = self.site.units(gather_slots(activation, self.batch), layer)  # [B, slot, d]
            for slot in self.slots[layer]:
                self.pending[(layer, slot)] = units[:, slot].double().cpu()

        return read


def _read_moments(plan: _BasisPlan) -> dict[tuple[int, int], tuple[CrossMoments, CrossMoments]]:
    """One pass: each (layer, slot)'s co-moments with the metric of the half of the examples
    that fits the probe and of the half that tests it (a loss metric from the same pass)."""
    reader = _SlotVectors(plan.units.site, plan.pairs)
    empty = CrossMoments.zeros(plan.units.site.size)
    sums = {pair: (empty, empty) for pair in plan.pairs}
    values = torch.full((len(plan.examples),), torch.nan, dtype=torch.float64)
    score = plan.known is None
    for batch, scores in batched_pass(
        plan.model,
        plan.encoded,
        plan.prompt.n_slots,
        [plan.prompt.writer(), reader],
        batch_size=plan.batch_size,
        logprobs=score,
        stop_after=None if score else reader.last_hook,
        progress=plan.progress,
        desc="basis test",
    ):
        rows = [plan.examples[i] for i in batch.indices]
        y = plan.metric(rows, batch.indices, scores) if score else plan.known[batch.indices]
        y = y.cpu().double()
        values[batch.indices] = y
        halves = (plan.fit[batch.indices], ~plan.fit[batch.indices])
        for pair, x in reader.pending.items():
            sums[pair] = tuple(
                part.merge(CrossMoments.of(x[half], y[half])) if half.any() else part
                for part, half in zip(sums[pair], halves, strict=True)
            )
    metrics.check_values(values, plan.metric.name)
    return sums


def _basis_result(
    plan: _BasisPlan,
    sums: dict[tuple[int, int], tuple[CrossMoments, CrossMoments]],
    n_rotations: int,
    seed: int,
) -> BasisTest:
    """The table from each (layer, slot)'s two halves' co-moments: the units' r and the random
    bases' over all the examples, the probe fitted on one half and tested on the other."""
    pooled = [sums[pair][0].merge(sums[pair][1]).covariance() for pair in plan.pairs]
    best = rotation_best(pooled, n_rotations, seed, plan.model.cfg.device)
    probes = [ridge_probe(sums[pair][0].covariance(), sums[pair][1].covariance())
              for pair in plan.pairs]  # fmt: skip
    rows, row_best = [], []
    for (layer, unit), slot in zip(plan.units, plan.slots, strict=True):
        j = plan.pairs.index((layer, slot))
        axis = torch.zeros(len(pooled[j].xy), 1, dtype=torch.float64)
        axis[unit] = 1.0
        r = float(pooled[j].r(axis)[0])
        beaten = int((best[j] >= abs(r)).sum())
        rows.append({
            "layer": layer, "unit": unit, "slot": slot, "r_unit": r,
            "rotation_best_mean": float(best[j].mean()),
            "rotation_best_q95": float(best[j].quantile(0.95)),
            "p_rotation": (1 + beaten) / (n_rotations + 1) if not math.isnan(r) else math.nan,
            "probe_r_heldout": probes[j][0], "n_examples": len(plan.examples),
        })  # fmt: skip
        row_best.append(best[j])
    settings = {
        "metric": plan.metric.name, "site": plan.units.site.name, "n_rotations": n_rotations,
        "seed": seed, "n_fit": int(plan.fit.sum()), "n_test": int((~plan.fit).sum()),
        "probe_lambda": {f"L{layer} slot {slot}": probe[1]
                         for (layer, slot), probe in zip(plan.pairs, probes, strict=True)},
        "data_hash": data_hash(plan.examples),
    }  # fmt: skip
    return BasisTest(pd.DataFrame(rows), torch.stack(row_best), settings)


def basis_test(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
    units: pd.DataFrame,
    *,
    n_rotations: int = 100,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> BasisTest:
    """Is each unit privileged by the neuron basis, or would any direction of its layer do? Each
    unit's |r| with the metric against the best |r| of ``n_rotations`` random orthogonal bases of
    its layer's units at its slot, and the held-out r of the best ridge probe there.

    One pass over ``examples`` streams, for each distinct (layer, slot) of ``units`` only, the
    co-moments of the layer's whole unit vector (``d`` units of the units' site) with itself and
    with the metric, separately for the half of the examples that fits the probe and the half that
    tests it; a metric computed from the model's pass (loss) comes from the same pass. From those
    alone: the unit's r (the scan's ``corr`` at its slot, over all the examples), each random
    basis's best direction (``rotation_best``), and the probe (``ridge_probe``). A unit that a
    random basis's best direction matches (``p_rotation`` not small) is not privileged: the metric
    is readable from the layer, not from that neuron's axis. A probe r well above |r_unit|, though
    held out while |r_unit| is in-sample, says the layer holds more than the neuron does.

    Memory: ``2·d²·8`` bytes per distinct (layer, slot) (the two halves' ``d × d`` co-moments,
    float64, CPU): 38 MB per pair for SmolLM2-135M's MLP (``d = 1536``). Time: ``n_rotations``
    QR decompositions of a ``d × d`` matrix, shared by the pairs, and per pair and rotation a
    ``rank × d × d`` product (the rank is at most the number of examples), on the model's device:
    measured on one CPU thread at ``d = 1536`` and N = 160, 0.37 s per rotation and 0.06 s per
    pair and rotation, under a minute for 100 rotations and a top-10 table.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the trained soft prompt.
        examples: the examples (at least 8): the scan's, to ask about its units as it saw them,
            or held-out ones.
        metric: anything ``scan`` takes (a ``sklens.metrics`` metric, a spec such as ``"loss"``, a
            callable, one number per example).
        units: a ``Scan.top_k`` table (or a DataFrame with columns layer, unit and slot); each
            unit is read at its own ``slot``.
        n_rotations: random orthogonal bases (Haar; see ``haar_rotation``).
        seed: seeds the bases and the probe's split of the examples.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.

    Returns:
        A ``BasisTest``: one row per unit (its ``table``), each row's random bases' best |r|, and
        the settings (the probe's chosen ridge penalty per (layer, slot) among them).
    """
    plan = _basis_plan(
        model, prompt, examples, metric, units,
        n_rotations=n_rotations, seed=seed, batch_size=batch_size, progress=progress,
    )  # fmt: skip
    return _basis_result(plan, _read_moments(plan), n_rotations, seed)


# -- selection stability ---------------------------------------------------------------------------


@dataclass
class SelectionStability:
    """How often a bootstrap resample of the examples keeps each of a scan's top-k units in its
    top-k (``sklens.selection_stability``).

    ``table`` has one row per top-k unit, best first: ``layer``, ``unit``, ``slot`` and ``score``
    (the scan's), ``stay_share`` (the share of resamples in which it ranks among the top k of the
    candidates) and ``mean_rank`` (its mean rank among the candidates, 1 the best). ``scores`` and
    ``ranks`` hold each resample's score and rank of each top-k unit. ``outside_share`` is the
    share of resamples whose k-th best candidate scores below the weakest candidate's full-sample
    |score|: those where a unit outside the candidates might have entered the top k, which the
    computation assumes never happens (0 when every scored unit is a candidate).
    """

    table: pd.DataFrame
    scores: Float[Tensor, "n_boot k"]
    ranks: Int[Tensor, "n_boot k"]
    outside_share: float
    settings: dict[str, Any]

    @property
    def mean_stay(self) -> float:
        """The mean ``stay_share`` over the top-k units."""
        return float(self.table["stay_share"].mean())


def bootstrap_rows(n_boot: int, n: int, seed: int = 0) -> Int[Tensor, "n_boot n"]:
    """``n_boot`` resamples of ``n`` examples, drawn with replacement from
    ``torch.Generator().manual_seed(seed)``."""
    return torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))


def _resampled_scores(
    acts: Float[Tensor, "n candidates slot"],
    values: Float[Tensor, " n"],
    resamples: Int[Tensor, "n_boot n"],
    reduce: Reduce,
) -> Float[Tensor, "n_boot candidates"]:
    """Each candidate's score in each resample: r at every slot (``batched_pearson``), then the
    scan's rule over the slots (``slot_scores``); as many resamples at a time as fit ``_BLOCK``
    entries."""
    acts, values = acts.double(), values.double()
    flat = acts.flatten(1)  # [n, candidates·slot]
    chunk = max(1, _BLOCK // flat.numel())
    parts = [
        batched_pearson(flat[rows].transpose(1, 2), values[rows]).view(len(rows), *acts.shape[1:])
        for rows in resamples.split(chunk)
    ]
    return slot_scores(torch.cat(parts), reduce)[0]


def stability_from_activations(
    acts: Float[Tensor, "n candidates slot"],
    values: Float[Tensor, " n"],
    candidates: pd.DataFrame,
    *,
    k: int,
    reduce: Reduce = "max",
    resamples: Int[Tensor, "n_boot n"],
    outsiders: bool = True,
) -> SelectionStability:
    """``selection_stability`` from the candidates' activations already read: ``candidates`` is a
    ``Scan.top_k`` table (best first, its ``score`` column full-sample), ``acts[:, j]`` the
    activations of its row ``j`` at every slot, ``resamples`` the rows of each resample, and
    ``outsiders`` whether the scan scored units that are not candidates. Ranks among the
    candidates break ties by the full-sample order, as ``argsort`` keeps it."""
    scores = _resampled_scores(acts, values, resamples, reduce)
    ranked = torch.where(scores.isnan(), -1.0, scores.abs())
    order = ranked.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(1, ranked.shape[1] + 1).expand_as(order).contiguous()
    )
    k = min(k, len(candidates))
    kth = ranked.topk(k, dim=1).values[:, -1]
    cutoff = abs(float(candidates["score"].iloc[-1]))
    table = candidates[["layer", "unit", "slot", "score"]].iloc[:k].reset_index(drop=True)
    table["stay_share"] = (ranks[:, :k] <= k).double().mean(0).numpy()
    table["mean_rank"] = ranks[:, :k].double().mean(0).numpy()
    outside = float((kth < cutoff).double().mean()) if outsiders else 0.0
    settings = {
        "k": k, "reduce": reduce, "n_boot": len(resamples), "n_candidates": len(candidates),
        "assumption": "units outside the candidates never enter a resample's top k",
    }  # fmt: skip
    return SelectionStability(table, scores[:, :k], ranks[:, :k], outside, settings)


def _scan_values(
    model: Model,
    prompt: SoftPrompt,
    examples: list[Example],
    metric: MetricLike,
    scan: Scan,
    batch_size: int,
) -> Float[Tensor, " n"]:
    """The metric's values, which must be the scan's: a metric computed from the model (loss,
    confidence, choice scores) is taken from the scan (``scan.metric_values``), any other is
    computed from the examples and compared with them."""
    metric = metrics.resolve(metric, len(examples))
    metric.check(examples)
    kept = scan.metric_values.double().cpu()
    if metric.needs_logprobs or metric.needs_choices:
        return kept
    values = values_before_pass(model, prompt, examples, metric, batch_size).double().cpu()
    if not torch.allclose(values, kept, rtol=1e-6, atol=1e-9):
        raise ValueError(
            f"the metric {metric.name!r} does not give the scan's metric values "
            f"({scan.settings.metric!r}): pass the metric the scan used, or scan.metric_values"
        )
    return values


def _check_scan(scan: Any, prompt: SoftPrompt, examples: list[Example]) -> None:
    """Refuse a scan that is not of ``prompt``'s slots over ``examples``, or a grouped one."""
    if not isinstance(scan, Scan):
        raise TypeError(
            f"scan must be a sklens.Scan (what sklens.scan returns), got {type(scan).__name__}"
        )
    settings = scan.settings
    if settings.positions != "soft_prompt" or settings.n_slots != prompt.n_slots:
        raise ValueError(
            f"the scan read {settings.n_slots} position(s) ({settings.positions}), not this "
            f"prompt's {prompt.n_slots} slots: pass the scan of this prompt"
        )
    if settings.data_hash != data_hash(examples):
        raise ValueError(
            f"these {len(examples)} examples are not the ones the scan ran on (their hash "
            "differs): pass the scan's own examples, in the same order"
        )
    if settings.permutation_groups is not None:
        raise ValueError(
            f"the scan is within-group ({settings.permutation_groups!r}); selection_stability "
            "resamples the marginal r: pass a scan without permutation_groups"
        )


def selection_stability(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
    scan: Scan,
    *,
    k: int = 10,
    reduce: Reduce = "max",
    n_boot: int = 200,
    n_candidates: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> SelectionStability:
    """The share of bootstrap resamples of the examples (with replacement) in which each of the
    scan's top-``k`` units stays in the top ``k``: how much of the selection the sampling of the
    examples decides, for this one prompt (an across-seed overlap mixes that with the prompt).

    Re-scanning every resample would cost ``n_boot`` scans. Instead one pass reads the scan's best
    ``n_candidates`` units at every slot (``slot_activations``), and each resample recomputes every
    candidate's r at every slot and its score under the scan's rule (``slot_scores``), then ranks
    the candidates. Units outside the candidates are assumed never to enter a resample's top k;
    ``SelectionStability.outside_share`` says how often the k-th resampled score falls below the
    weakest candidate's full-sample |score|, where that assumption could fail. Memory:
    ``4·N·n_candidates·slots`` bytes for the activations (64 KB per candidate at N = 160 and 20
    slots), and blocks of resampled ones, float64, of at most 64 MB each.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt the scan used.
        examples: the scan's examples, in its order.
        metric: the scan's metric. One computed from the model (loss, confidence, choice scores)
            is taken from the scan (``scan.metric_values``); any other must give the same values.
        scan: a scan of ``prompt`` over ``examples`` (not a within-group one).
        k: the size of the top set.
        reduce: the ranking rule (``"max"``, the paper's, or ``"absmax"``).
        n_boot: bootstrap resamples (``bootstrap_rows``).
        n_candidates: units read and ranked (default ``max(10·k, 100)``; at least ``k``).
        seed: seeds the resamples.
        batch_size: examples per forward pass.
        progress: show a tqdm bar.
    """
    validate.integer("k", k, minimum=1, meaning="how many top units")
    validate.integer("n_boot", n_boot, minimum=1, meaning="bootstrap resamples")
    n_candidates = max(10 * k, 100) if n_candidates is None else n_candidates
    validate.integer("n_candidates", n_candidates, minimum=k, meaning="units ranked")
    validate.integer("seed", seed)
    check_rule(reduce)
    arguments.model(model)
    arguments.prompt(prompt, optional=False)
    examples = arguments.examples(examples)
    _check_scan(scan, prompt, examples)
    values = _scan_values(model, prompt, examples, metric, scan, batch_size)
    candidates = scan.top_k(n_candidates, reduce)
    acts = slot_activations(
        model, prompt, examples, candidates, batch_size=batch_size, progress=progress
    )
    result = stability_from_activations(
        acts, values, candidates, k=k, reduce=reduce,
        resamples=bootstrap_rows(n_boot, len(examples), seed),
        outsiders=int((~scan.scores(reduce)[0].isnan()).sum()) > len(candidates),
    )  # fmt: skip
    result.settings.update(seed=seed, metric=scan.settings.metric, data_hash=data_hash(examples))
    return result
