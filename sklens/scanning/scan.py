"""The neuron scan: Pearson r between every unit's soft-slot activation and a metric.

For layer ``L``, unit ``i`` and soft-prompt position ``k``, ``corr[L, i, k]`` is the correlation
over examples between unit ``i`` of the site's hook (by default the MLP neuron
``blocks.L.mlp.hook_post[..., slot k, i]``; ``sklens.sites`` for heads, residual, SAE latents)
and the metric. One forward pass per batch: ``hook_embed`` writes the prompt into the slots, and
a hook on each layer's site folds the slot units into streaming moments (``sklens.stats.moments``),
so memory is ``O(layers × units × slots)`` whatever the number of examples. When the metric needs no
model output the pass stops after the last scanned layer and the sequence ends at the slots.

The result, its ranking rules and significance methods live in ``sklens.scanning.result.Scan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sklens import validate
from sklens.data.example import Example, data_hash
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass, gather_slots, slot_count, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics as metrics_mod
from sklens.scanning.choices import score_examples
from sklens.scanning.metrics import Metric, MetricLike
from sklens.scanning.result import Scan
from sklens.scanning.scan_settings import ScanSettings
from sklens.stats import distributed
from sklens.stats.extremes import Extremes
from sklens.stats.moments import GroupedMoments, Moments, centre_within, group_codes
from sklens.stats.mutual_info import MutualInfo, MutualInfoAccumulator
from sklens.stats.permutation import PermutationAccumulator, PermutationNull
from sklens.stats.slot_buffer import SlotBuffer
from sklens.units.sites import Site, SiteLike, resolve_site
from sklens.version import __version__

_BLOCK = 128  # examples per SlotBuffer block when not all are held: the products' inner size


def resolve_layers(model: Model, layers: Sequence[int] | None) -> list[int]:
    """Validated, sorted layer indices (all layers when ``None``)."""
    n_layers = model.cfg.n_layers
    if layers is None:
        return list(range(n_layers))
    chosen = sorted({int(layer) for layer in layers})
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if not chosen or bad:
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    return chosen


@dataclass
class ScanAccumulator:
    """What a scan folds its slot units into, batch by batch: the (grouped) moments behind
    ``corr`` and a ``SlotBuffer`` that hands blocks of examples to the permutation null, the
    extremal examples and the mutual information. ``scan`` and ``scan_activations`` both fold
    through it, so their statistics are the same computation.

    ``moments`` is ``None`` in a pass that only feeds the null (``scan``'s second pass);
    ``null_in_pass`` says whether the buffer hands its blocks to the null during the pass.
    """

    shape: tuple[int, int, int]  # (layers, units, slots)
    moments: Moments | GroupedMoments | None
    buffer: SlotBuffer | None = None
    perm: PermutationAccumulator | None = None
    extremes: Extremes | None = None
    mi: MutualInfoAccumulator | None = None
    null_in_pass: bool = True

    @classmethod
    def zeros(
        cls,
        n_examples: int,
        shape: tuple[int, int, int],
        *,
        capacity: int,
        groups: Sequence[object] | None = None,
        n_permutations: int = 0,
        permutation_seed: int = 0,
        values: Float[Tensor, " n"] | None = None,
        null_in_pass: bool = True,
        n_extremal: int = 0,
        mi_bins: int = 0,
        device: torch.device | str = "cpu",
    ) -> ScanAccumulator:
        """Empty statistics for ``n_examples`` examples of ``[layers, units, slots]`` units:
        within-group moments and null with ``groups``, the null with ``n_permutations`` (of
        ``values`` when the metric is known before the pass), ``n_extremal`` extremal examples,
        mutual information with ``mi_bins``; the buffer holds ``capacity`` examples."""
        moments = (
            Moments.zeros(*shape, device)
            if groups is None
            else GroupedMoments.zeros(group_codes(list(groups)), *shape, device)
        )
        perm = None
        if n_permutations:
            perm = PermutationAccumulator(
                n_examples,
                shape,
                n_permutations,
                seed=permutation_seed,
                groups=groups,
                device=device,
            )
            if values is not None:
                perm.set_values(values)
        extremes = Extremes.empty(shape, n_extremal, device) if n_extremal else None
        mi = MutualInfoAccumulator(n_examples, shape, mi_bins, device) if mi_bins else None
        in_pass = perm is not None and null_in_pass
        sinks = [s for s in (perm if in_pass else None, extremes, mi) if s is not None]
        buffer = SlotBuffer(shape, capacity, sinks, device) if sinks else None
        return cls(shape, moments, buffer, perm, extremes, mi, in_pass)

    def fold(
        self,
        slots: Mapping[int, Float[Tensor, "batch slots units"]],
        m: Float[Tensor, " batch"],
        rows: list[int],
    ) -> None:
        """Fold one batch, examples ``rows`` with metric values ``m``: each layer ``j``'s slot
        units ``slots[j]`` into the buffer and the moments, then the metric."""
        grouped = (rows,) if isinstance(self.moments, GroupedMoments) else ()  # rows → groups
        for j, units in slots.items():
            if self.buffer is not None:
                self.buffer.fold_layer(j, units, rows)
            if self.moments is not None:
                self.moments.fold_layer(j, units, m, *grouped)
        if self.moments is not None:
            self.moments.fold_metric(m, *grouped)

    def take_held(self) -> None:
        """Give what the buffer still holds to the extremes and the mutual information, once
        every example is folded (the null reads it itself, in ``null``)."""
        for sink in (self.extremes, self.mi):
            for j in range(self.shape[0] if sink is not None else 0):
                sink.take(self.buffer.held(j))

    def null(self, buffer: SlotBuffer | None = None) -> PermutationNull | None:
        """The permutation null (``None`` without one), from the moments and what ``buffer``
        still holds: this accumulator's, or that of the second pass that fed the null."""
        if self.perm is None:
            return None
        held = self.buffer if buffer is None else buffer
        return self.perm.reduce(held, self.moments.mean_a, self.moments.m2_a)

    def mutual_info(self, values: Float[Tensor, " n"], layers: list[int]) -> MutualInfo | None:
        """The mutual information with ``values`` (``None`` without it), with its null over the
        permutation null's permutations."""
        if self.mi is None:
            return None
        return self.mi.result(values, layers, None if self.perm is None else self.perm.perms)


class _Folder:
    """Site hooks that fold the slots' units into a ``ScanAccumulator``, batch by batch.

    The hooks only keep each layer's slot units; they are folded when the batch's pass has ended
    (and its metric is known, for a metric computed from the pass). Holding one batch of them,
    ``4·layers·B·slots·units`` bytes (29 MB for SmolLM2 at batch 8), keeps the fold's arithmetic
    from interleaving with the forward pass: folding inside the hooks made a label-metric scan
    ~6% slower than its floor on CPU, folding after it ~1% (``benchmarks/scan.py``).
    """

    def __init__(
        self,
        accumulator: ScanAccumulator,
        layers: list[int],
        site: Site,
        known: Tensor | None = None,
    ):
        self.accumulator, self.layers, self.site, self.known = accumulator, layers, site, known
        self.batch: Batch | None = None
        self.m: Tensor | None = None
        self.pending: dict[int, Tensor] = {}
        self.last_hook = site.hook(layers[-1])

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(layer), self._hook(j)) for j, layer in enumerate(self.layers)]

    def _hook(self, j: int) -> Any:
        layer = self.layers[j]

        def keep(activation: Tensor, hook: Any) -> None:
            self.pending[j] = self.site.units(gather_slots(activation, self.batch), layer)

        return keep

    def start(self, batch: Batch) -> None:
        """The next batch; its metric values when they are known before the pass."""
        m = None if self.known is None else self.known[batch.indices].to(batch.tokens.device)
        self.batch, self.m, self.pending = batch, m, {}

    def finish(self, m: Tensor) -> None:
        """Fold the batch's slot units, every layer's, once the pass has ended."""
        if len(self.pending) != len(self.layers):
            raise RuntimeError("the forward pass did not reach every scanned layer's site hook")
        self.accumulator.fold(self.pending, m, self.batch.indices)
        self.pending = {}


def values_before_pass(
    model: Model,
    prompt: SoftPrompt | None,
    examples: list[Example],
    metric: Metric,
    batch_size: int,
) -> Tensor | None:
    """The metric's values when they are known before the pass that reads activations: a label
    metric's from the examples, a choice metric's from every choice scored first
    (``score_examples``); ``None`` for a metric computed from the pass itself (loss)."""
    if metric.needs_choices:
        scored = score_examples(model, prompt, examples, batch_size=batch_size)
        return metric(examples, range(len(examples)), scored)
    if not metric.needs_logprobs:
        return metric(examples, range(len(examples)), None)
    return None


def check_varies_within(values: Tensor, codes: Tensor, name: str, field: str) -> None:
    """Raise when the metric is constant inside every group: no within-group r exists."""
    centred = centre_within(values, codes)
    if float(centred.abs().max()) <= 1e-12 * max(1.0, float(values.abs().max())):
        raise ValueError(
            f"metric {name!r} is constant within every group of {field!r}, so a within-group "
            f"correlation is undefined: permutation_groups={field!r} asks whether neurons track the "
            "metric inside each group; choose a metric that varies inside the groups, or drop "
            "permutation_groups"
        )


def check_slots_vary(moments: Moments | GroupedMoments) -> None:
    """Raise when soft-slot activations are (nearly) identical for every example seen so far."""
    spread = float(moments.std_a().max())
    scale = float(moments.mean_a.abs().max())
    if spread <= 1e-6 * (scale + 1e-6):
        raise ValueError(
            f"the soft-prompt slot activations are the same for every example (largest std "
            f"{spread:.3g} across {moments.n} examples): the slots cannot see anything that "
            "differs between examples. Put everything example-specific in Example.instruction "
            "(the slots come after it, and a causal model's slots only see what precedes them), "
            "and check that the examples are not all identical"
        )


@dataclass(frozen=True)
class _Options:
    """How ``scan`` was asked to scan: what its passes and its statistics need besides the model,
    the prompt, the examples and the metric."""

    batch_size: int
    n_permutations: int
    permutation_groups: str | None
    permutation_seed: int
    n_extremal: int
    mi_bins: int
    progress: bool

    def check(self, n_examples: int) -> None:
        """Raise on a bad number, or on mutual information asked where it cannot be computed."""
        validate.integer("batch_size", self.batch_size, minimum=1)
        validate.integer("n_permutations", self.n_permutations, minimum=0)
        validate.integer("n_extremal", self.n_extremal, minimum=0)
        validate.mi_bins(self.mi_bins, n_examples)
        groups = self.permutation_groups
        if self.mi_bins and groups is not None:
            raise ValueError(
                f"mutual information is marginal, but permutation_groups={groups!r} asks "
                "for a within-group statistic: scan with mi_bins=0, or without permutation_groups"
            )
        if self.mi_bins and distributed.active():
            raise ValueError(
                "mutual information needs every example's bins in one process: run the scan with "
                "mi_bins in a single process (no torchrun), or with mi_bins=0"
            )


@dataclass(frozen=True)
class _Plan:
    """One scan, checked and resolved before any pass that reads activations: what every pass
    reads (the examples encoded in the slot layout, ``order`` this process's share of them) and
    the metric's values when they are known before the pass (``known``)."""

    model: Model
    prompt: SoftPrompt | None
    examples: list[Example]
    encoded: list
    metric: Metric
    site: Site
    layers: list[int]
    groups: list[object] | None  # each example's permutation_groups label
    known: Float[Tensor, " n"] | None
    order: list[int]
    options: _Options

    @classmethod
    def prepare(
        cls,
        model: Model,
        prompt: SoftPrompt | None,
        examples: Sequence[Example],
        metric: MetricLike,
        options: _Options,
        *,
        site: SiteLike | None,
        layers: Sequence[int] | None,
        chat_template: bool | None,
    ) -> _Plan:
        """Check ``scan``'s arguments, cheapest first and all before the pass; resolve the metric,
        the site, the layers and the groups; encode the examples; compute the metric's values
        where they are known before the pass."""
        arguments.model(model)
        arguments.prompt(prompt)
        examples = arguments.examples(examples)
        if len(examples) < validate.MIN_SCAN:
            raise ValueError(
                f"a scan needs at least 3 examples for a correlation, got {len(examples)}"
            )
        options.check(len(examples))
        metric = metrics_mod.resolve(metric, len(examples))
        metric.check(examples)
        site = resolve_site(site, model)
        if layers is None:  # the layers the site exists at (an SAE's, an attached SAE's hook)
            layers = site.layers_in(model) or None
        layer_ids = resolve_layers(model, layers)
        site.check_layers(layer_ids, model)
        if prompt is not None:
            prompt.check_fits(model)
        groups = _group_labels(examples, options.permutation_groups)
        n_slots = slot_count(prompt)
        encoded = encode(model, examples, n_slots, chat_template=chat_template)
        known = values_before_pass(model, prompt, examples, metric, options.batch_size)
        plan = cls(
            model, prompt, examples, encoded, metric, site, layer_ids, groups, known,
            distributed.shard(len(examples)), options,
        )  # fmt: skip
        if known is not None:
            plan.check_values(known)
        return plan

    @property
    def n_slots(self) -> int:
        """The soft prompt's length (0: no prompt, the instruction's last token is read)."""
        return slot_count(self.prompt)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The statistics' ``(layers, units, slots)``."""
        return (len(self.layers), self.site.size, max(self.n_slots, 1))

    @property
    def block(self) -> int:
        """Examples per buffer block when the buffer does not hold all this process's examples."""
        return min(len(self.order), max(self.options.batch_size, _BLOCK))

    def check_values(self, values: Float[Tensor, " n"]) -> None:
        """Raise on metric values no correlation can use (``metrics.check_values``), and, with
        groups, on a metric constant within every group."""
        metrics_mod.check_values(values, self.metric.name)
        if self.groups is not None:
            check_varies_within(
                values, group_codes(self.groups), self.metric.name, self.options.permutation_groups
            )


def _group_labels(examples: list[Example], field: str | None) -> list[object] | None:
    """Each example's ``meta[field]``, the ``permutation_groups`` label (``None`` without)."""
    if field is None:
        return None
    missing = [i for i, e in enumerate(examples) if field not in e.meta]
    if missing:
        raise ValueError(f"permutation_groups={field!r} is missing in examples {missing[:5]}")
    return [e.meta[field] for e in examples]


def _pass(plan: _Plan, folder: _Folder, *, desc: str) -> Tensor:
    """One pass over ``plan.examples[plan.order]`` with the folder's hooks; returns the metric
    values (NaN for examples outside ``order``, which other ranks scan). With the values known
    before the pass (``folder.known``) it stops after the last scanned layer."""
    values = torch.full((len(plan.examples),), torch.nan, dtype=torch.float64)
    known = folder.known is not None
    parts = with_prompt(plan.prompt, folder)
    moments = folder.accumulator.moments
    checked = moments is None
    for batch, scores in batched_pass(
        plan.model,
        plan.encoded,
        plan.n_slots,
        parts,
        batch_size=plan.options.batch_size,
        order=plan.order,
        logprobs=not known,
        stop_after=folder.last_hook if known else None,
        progress=plan.options.progress,
        desc=desc,
    ):
        m = (
            folder.m
            if known
            else plan.metric([plan.examples[i] for i in batch.indices], batch.indices, scores)
        )
        folder.finish(m.to(plan.model.cfg.device))
        values[batch.indices] = m.cpu()
        if not checked and moments.n >= 2:
            check_slots_vary(moments)
            checked = True
    return values


def _accumulator(plan: _Plan) -> ScanAccumulator:
    """The scan's empty statistics. The null takes its blocks during the pass when the metric is
    known before it, or when the buffer holds all this process's examples."""
    options = plan.options
    # all this process's examples held when the null would need as much memory for its sums
    hold_all = options.n_permutations > 0 and len(plan.order) <= options.n_permutations
    return ScanAccumulator.zeros(
        len(plan.examples),
        plan.shape,
        capacity=len(plan.order) if hold_all else plan.block,
        groups=plan.groups,
        n_permutations=options.n_permutations,
        permutation_seed=options.permutation_seed,
        values=plan.known,
        null_in_pass=plan.known is not None or hold_all,
        n_extremal=options.n_extremal,
        mi_bins=options.mi_bins,
        device=plan.model.cfg.device,
    )


def _scan_pass(plan: _Plan, accumulator: ScanAccumulator) -> Tensor:
    """The pass that reads the activations into ``accumulator``; returns every example's metric
    value, checked, with the moments and the extremes merged across processes."""
    values = _pass(plan, _Folder(accumulator, plan.layers, plan.site, plan.known), desc="scan")
    values = distributed.sum_values(values, ~values.isnan())
    accumulator.moments = distributed.merge_moments(accumulator.moments)
    plan.check_values(values)
    accumulator.take_held()
    if accumulator.extremes is not None:
        accumulator.extremes = distributed.merge_extremes(accumulator.extremes)
    return values


def _null(plan: _Plan, accumulator: ScanAccumulator, values: Tensor) -> PermutationNull | None:
    """The permutation null; a model-based metric's over more examples than permutations takes
    a second pass, its values now known."""
    perm = accumulator.perm
    if perm is None:
        return None
    if plan.known is None:
        perm.set_values(values)
    if accumulator.null_in_pass:
        return accumulator.null()
    buffer = SlotBuffer(plan.shape, plan.block, [perm], plan.model.cfg.device)
    second = ScanAccumulator(plan.shape, None, buffer, perm)
    _pass(plan, _Folder(second, plan.layers, plan.site, values), desc="permutation null")
    return accumulator.null(buffer)


def _settings(plan: _Plan) -> ScanSettings:
    """What made the scan, saved with it."""
    model, prompt, options = plan.model, plan.prompt, plan.options
    groups = options.permutation_groups
    return ScanSettings(
        model_name=getattr(model.cfg, "model_name", None),
        n_layers=model.cfg.n_layers,
        n_units=plan.site.size,
        site=plan.site.name,
        layers=tuple(plan.layers),
        n_slots=max(plan.n_slots, 1),
        prompt=None
        if prompt is None
        else {
            "seed": prompt.config.seed,
            "init": prompt.config.init.value,
            "training": prompt.config.training,
        },
        positions="soft_prompt" if prompt is not None else "last_instruction_token",
        metric=plan.metric.name,
        n_examples=len(plan.examples),
        batch_size=options.batch_size,
        n_permutations=options.n_permutations,
        permutation_groups=groups,
        statistic="pearson" if groups is None else f"within-group pearson ({groups})",
        permutation_seed=options.permutation_seed,
        data_hash=data_hash(plan.examples),
        backend=type(model).__name__,
        sklens_version=__version__,
        n_extremal=options.n_extremal,
        mi_bins=options.mi_bins,
    )


def scan(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    metric: MetricLike,
    *,
    batch_size: int = 8,
    layers: Sequence[int] | None = None,
    n_permutations: int = 0,
    permutation_groups: str | None = None,
    permutation_seed: int = 0,
    n_extremal: int = 0,
    mi_bins: int = 0,
    site: SiteLike | None = None,
    chat_template: bool | None = None,
    progress: bool = True,
) -> Scan:
    """Correlate every unit's soft-slot activation with ``metric`` over ``examples``.

    Args:
        model: a HookedTransformer or TransformerBridge (compatibility mode).
        prompt: the trained soft prompt; ``None`` reads the instruction's last token instead (a
            baseline: what the model encodes without a prompt; ``corr`` then has one position).
        examples: the validation set (at least 3).
        metric: a ``sklens.metrics`` metric, a callable ``Example -> float``, or one number per
            example.
        batch_size: examples per forward pass.
        layers: the layers to scan (default all).
        n_permutations: B > 0 also builds the max-statistic permutation null (``scan.null``;
            ``p_values``, ``q_values``, ``significant``), computed from the same pass: the
            slot activations are held in blocks (``sklens.stats.slot_buffer``). A model-based metric
            (loss, confidence) is only known once the pass has run, so its null is computed
            from the held activations when they all fit, i.e. when this process scans at most
            B examples (memory ``4·B·layers·d_mlp·slots`` bytes at most); with more examples
            than permutations it takes a second pass.
        permutation_groups: a meta field. The scan then asks whether neurons track the metric
            *within* its groups: ``corr`` is the pooled within-group r (the partial correlation
            on the group) and the permutations stay inside the groups (exchangeability blocks),
            so observed scores and null are the same statistic. ``Scan.marginal_corr`` keeps
            the ordinary r.
        permutation_seed: seed of the permutations.
        n_extremal: keep each unit's ``n_extremal`` most and least activating examples at every
            slot while scanning (``Scan.extremes``), so the extremal examples of any neuron need
            no second pass (``Scan.top_examples``, ``collect_evidence(kept=...)``). A top-k per
            block of examples: on CPU it adds a few percent to the scan (``benchmarks/scan.py``),
            so it is off by default; ``sklens run`` keeps ``--n-extremal`` of them.
        mi_bins: A > 0 also estimates the binned mutual information of every unit's slot
            activation with the metric, ``A`` equal-frequency bins per unit (``scan.mutual_info``;
            with ``n_permutations`` its null from the same permutations): a second selection
            measure that finds units whose activation relates to the metric non-linearly
            (``sklens.stats.mutual_info``). Memory ``layers·d_mlp·slots`` bytes per example.
        site: what a unit is (``sklens.sites``): ``"mlp"`` (default, the paper's neurons),
            ``"heads"``, ``"head_dims"``, ``"resid"``, a hook template ``"blocks.{layer}.…"``,
            ``sklens.sites.Directions.of(vectors)``, or a SAELens SAE / ``{layer: SAE}``
            (its latents). ``Scan.site`` and ``top_k``'s ``site`` column carry it.
        chat_template: use the tokenizer's chat template (default: if it has one).
        progress: show a tqdm bar.
    """
    options = _Options(
        batch_size=batch_size, n_permutations=n_permutations, permutation_groups=permutation_groups,
        permutation_seed=permutation_seed, n_extremal=n_extremal, mi_bins=mi_bins, progress=progress,
    )  # fmt: skip
    plan = _Plan.prepare(
        model, prompt, examples, metric, options, site=site, layers=layers,
        chat_template=chat_template,
    )  # fmt: skip
    accumulator = _accumulator(plan)
    values = _scan_pass(plan, accumulator)
    null = _null(plan, accumulator, values)
    mutual_info = accumulator.mutual_info(values, plan.layers)
    return Scan(
        accumulator.moments, values, _settings(plan), null, accumulator.extremes, mutual_info,
        site=plan.site, selection_ids=arguments.example_ids(plan.examples),
    )  # fmt: skip
