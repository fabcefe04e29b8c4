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

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sklens import validate
from sklens.data.example import Example, data_hash
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import BatchPart, batched_pass, gather_slots
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics as metrics_mod
from sklens.scanning.choices import score_examples
from sklens.scanning.metrics import Metric
from sklens.scanning.result import Scan
from sklens.scanning.scan_settings import ScanSettings
from sklens.stats import distributed
from sklens.stats.extremes import Extremes
from sklens.stats.moments import GroupedMoments, Moments, centre_within, group_codes
from sklens.stats.mutual_info import MutualInfoAccumulator
from sklens.stats.permutation import PermutationAccumulator
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


class _Folder:
    """Site hooks that fold the slots' units into moments, batch by batch, and
    into the ``SlotBuffer`` the permutation null and the extremal examples are computed from.

    The hooks only keep each layer's slot units; they are folded when the batch's pass has ended
    (and its metric is known, for a metric computed from the pass). Holding one batch of them,
    ``4·layers·B·slots·units`` bytes (29 MB for SmolLM2 at batch 8), keeps the fold's arithmetic
    from interleaving with the forward pass: folding inside the hooks made a label-metric scan
    ~6% slower than its floor on CPU, folding after it ~1% (``benchmarks/scan.py``).
    """

    def __init__(
        self,
        moments: Moments | GroupedMoments | None,
        layers: list[int],
        site: Site,
        buffer: SlotBuffer | None = None,
        known: Tensor | None = None,
    ):
        self.moments, self.layers, self.buffer, self.known = moments, layers, buffer, known
        self.site = site
        self.grouped = isinstance(moments, GroupedMoments)
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

    def _fold(self, j: int, slots: Tensor, m: Tensor) -> None:
        if self.grouped:
            self.moments.fold_layer(j, slots, m, self.batch.indices)
        else:
            self.moments.fold_layer(j, slots, m)

    def start(self, batch: Batch) -> None:
        """The next batch; its metric values when they are known before the pass."""
        m = None if self.known is None else self.known[batch.indices].to(batch.tokens.device)
        self.batch, self.m, self.pending = batch, m, {}

    def finish(self, m: Tensor) -> None:
        """Fold the batch's slot units, every layer's, once the pass has ended."""
        if len(self.pending) != len(self.layers):
            raise RuntimeError("the forward pass did not reach every scanned layer's site hook")
        for j, slots in self.pending.items():
            if self.buffer is not None:
                self.buffer.fold_layer(j, slots, self.batch.indices)
            if self.moments is not None:
                self._fold(j, slots, m)
        self.pending = {}
        if self.moments is None:
            return
        if self.grouped:
            self.moments.fold_metric(m, self.batch.indices)
        else:
            self.moments.fold_metric(m)


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


def _pass(
    model: Model,
    prompt: SoftPrompt | None,
    examples: list[Example],
    encoded: list,
    metric: Metric,
    folder: _Folder,
    batch_size: int,
    progress: bool,
    desc: str,
    order: list[int],
) -> Tensor:
    """One pass over ``examples[order]`` with the folder's hooks; returns the metric values
    (NaN for examples outside ``order``, which other ranks scan). With the values known before
    the pass (``folder.known``) it stops after the last scanned layer."""
    values = torch.full((len(examples),), torch.nan, dtype=torch.float64)
    known = folder.known is not None
    parts: list[BatchPart] = [prompt.writer(), folder] if prompt is not None else [folder]
    checked = folder.moments is None
    for batch, scores in batched_pass(
        model,
        encoded,
        prompt.n_tokens if prompt is not None else 0,
        parts,
        batch_size=batch_size,
        order=order,
        logprobs=not known,
        stop_after=folder.last_hook if known else None,
        progress=progress,
        desc=desc,
    ):
        m = (
            folder.m
            if known
            else metric([examples[i] for i in batch.indices], batch.indices, scores)
        )
        folder.finish(m.to(model.cfg.device))
        values[batch.indices] = m.cpu()
        if not checked and folder.moments.n >= 2:
            check_slots_vary(folder.moments)
            checked = True
    return values


def scan(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    metric: Metric | Any,
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
    arguments.model(model)
    arguments.prompt(prompt)
    examples = arguments.examples(examples)
    if len(examples) < validate.MIN_SCAN:
        raise ValueError(f"a scan needs at least 3 examples for a correlation, got {len(examples)}")
    validate.integer("batch_size", batch_size, minimum=1)
    validate.integer("n_permutations", n_permutations, minimum=0)
    validate.integer("n_extremal", n_extremal, minimum=0)
    validate.mi_bins(mi_bins, len(examples))
    if mi_bins and permutation_groups is not None:
        raise ValueError(
            f"mutual information is marginal, but permutation_groups={permutation_groups!r} asks "
            "for a within-group statistic: scan with mi_bins=0, or without permutation_groups"
        )
    if mi_bins and distributed.active():
        raise ValueError(
            "mutual information needs every example's bins in one process: run the scan with "
            "mi_bins in a single process (no torchrun), or with mi_bins=0"
        )
    metric = metrics_mod.resolve(metric, len(examples))
    metric.check(examples)
    site = resolve_site(site, model)
    if layers is None:  # the layers the site exists at (an SAE's, an attached SAE's hook)
        layers = site.layers_in(model) or None
    layer_ids = resolve_layers(model, layers)
    site.check_layers(layer_ids, model)
    if prompt is not None:
        prompt.check_fits(model)
    n_slots = prompt.n_tokens if prompt is not None else 0
    groups = None
    if permutation_groups is not None:
        missing = [i for i, e in enumerate(examples) if permutation_groups not in e.meta]
        if missing:
            raise ValueError(
                f"permutation_groups={permutation_groups!r} is missing in examples {missing[:5]}"
            )
        groups = [e.meta[permutation_groups] for e in examples]
    codes = group_codes(groups) if groups is not None else None
    encoded = encode(model, examples, n_slots, chat_template=chat_template)
    known = values_before_pass(model, prompt, examples, metric, batch_size)
    if known is not None:
        metrics_mod.check_values(known, metric.name)
        if codes is not None:
            check_varies_within(known, codes, metric.name, permutation_groups)

    device = model.cfg.device
    shape = (len(layer_ids), site.size, max(n_slots, 1))
    moments = (
        Moments.zeros(*shape, device)
        if codes is None
        else GroupedMoments.zeros(codes, *shape, device)
    )

    order = distributed.shard(len(examples))
    perm = extremes = buffer = None
    if n_permutations:
        perm = PermutationAccumulator(
            len(examples),
            shape,
            n_permutations,
            seed=permutation_seed,
            groups=groups,
            device=device,
        )
        if known is not None:
            perm.set_values(known)
    if n_extremal:
        extremes = Extremes.empty(shape, n_extremal, device)
    mi = MutualInfoAccumulator(len(examples), shape, mi_bins, device) if mi_bins else None
    # all this process's examples held when the null would need as much memory for its sums
    hold_all = perm is not None and len(order) <= n_permutations
    in_pass = perm is not None and (known is not None or hold_all)
    sinks = [s for s in (perm if in_pass else None, extremes, mi) if s is not None]
    if sinks:
        capacity = len(order) if hold_all else min(len(order), max(batch_size, _BLOCK))
        buffer = SlotBuffer(shape, capacity, sinks, device)
    folder = _Folder(moments, layer_ids, site, buffer, known)
    values = _pass(
        model, prompt, examples, encoded, metric, folder, batch_size, progress, "scan", order
    )
    values = distributed.sum_values(values, ~values.isnan())
    moments = distributed.merge_moments(moments)
    metrics_mod.check_values(values, metric.name)
    if codes is not None:
        check_varies_within(values, codes, metric.name, permutation_groups)
    for sink in (extremes, mi):  # what the buffer still holds (the null reads it itself)
        for j in range(len(layer_ids) if sink is not None else 0):
            sink.take(buffer.held(j))
    if extremes is not None:
        extremes = distributed.merge_extremes(extremes)
    null = None
    if perm is not None:
        if known is None:
            perm.set_values(values)
        if not in_pass:  # a model-based metric over more examples than permutations
            buffer = SlotBuffer(shape, min(len(order), max(batch_size, _BLOCK)), [perm], device)
            second = _Folder(None, layer_ids, site, buffer, values)
            _pass(
                model,
                prompt,
                examples,
                encoded,
                metric,
                second,
                batch_size,
                progress,
                "permutation null",
                order,
            )
        null = perm.reduce(buffer, moments.mean_a, moments.m2_a)
    mutual_info = None
    if mi is not None:
        mutual_info = mi.result(values, layer_ids, None if perm is None else perm.perms)
    settings = ScanSettings(
        model_name=getattr(model.cfg, "model_name", None),
        n_layers=model.cfg.n_layers,
        n_units=site.size,
        site=site.name,
        layers=tuple(layer_ids),
        n_tokens=max(n_slots, 1),
        prompt=None
        if prompt is None
        else {
            "seed": prompt.config.seed,
            "init": prompt.config.init.value,
            "training": prompt.config.training,
        },
        positions="soft_prompt" if prompt is not None else "last_instruction_token",
        metric=metric.name,
        n_examples=len(examples),
        batch_size=batch_size,
        n_permutations=n_permutations,
        permutation_groups=permutation_groups,
        statistic="pearson" if codes is None else f"within-group pearson ({permutation_groups})",
        permutation_seed=permutation_seed,
        data_hash=data_hash(examples),
        backend=type(model).__name__,
        sklens_version=__version__,
        n_extremal=n_extremal,
        mi_bins=mi_bins,
    )
    return Scan(
        moments, values, settings, null, extremes, mutual_info, site=site,
        selection_ids=arguments.example_ids(examples),
    )  # fmt: skip
