"""Does the trained prompt change a unit's association with the metric? A per-unit contrast of
the trained soft prompt against a baseline, on the same examples and the same metric values.

That a baseline (the prompt's own untrained initialisation, or no prompt) reaches the same top-K
*threshold* as the trained prompt says nothing about *which* units track the metric. ``contrast``
compares every unit's score under both conditions and gives each unit a p-value for "the trained
prompt changes this unit's association".

**What is compared.** Each unit's score under the scan's ranking rule (``reduce``:
``sklens.stats.ranking``, the max of r over the slots by default) under the trained prompt and
under the baseline, both over the same examples and correlated with the same metric values. A
metric computed from the model's own pass (loss, confidence) is computed once, in the trained
prompt's pass, and used for both conditions: each condition's own loss would be a different
metric (science review, finding 20). The baselines:

* ``"untrained"``: the trained prompt's own starting point, ``SoftPrompt.init_for`` with the init
  mode, text and seed its config recorded: what training started from.
* ``"no_prompt"``: the model without slots, read at the last ``n_slots`` positions of the text
  before the slots (the instruction, and with a chat template the assistant header after it).
  That is as many positions as the prompt has slots, so a max over positions compares like with
  like (a max over 20 slots against one position would not); position ``k`` pairs with slot
  ``k``, and the last one is the scan's own no-prompt position, the last instruction token. Every
  example needs at least ``n_slots`` tokens before the slots.
* a ``SoftPrompt`` of the same length: any other prompt (another seed's, say).

**The statistic.** ``diff = atanh(score_trained) − atanh(score_baseline)`` per unit (Fisher z),
tested two-sided (``|diff|``).

**The null, and why it is valid.** Each example contributes a pair of activation vectors, one per
condition (every unit at every slot). Each condition's activations are first standardised per
unit and slot over the examples (centred, unit norm): Pearson r ignores a shift and a scale, so a
prompt that only moves or rescales a unit is no change. Under the null hypothesis that the two
conditions are exchangeable within each example (the standardised activations relate to the
example and the metric the same way under both), swapping the two vectors of any subset of
examples leaves the data's distribution unchanged. Each permutation swaps a random subset (each
example with probability 1/2) and recomputes both conditions' r at every slot, the reduction over
the slots (so the slot a unit is read at is chosen again in every permutation, as it was chosen
in the data) and ``diff``; ``p_unit = (1 + #{|diff*| ≥ |diff|}) / (B + 1)`` is then a valid p at
any B (a Monte Carlo randomisation test). A permutation swaps every unit's pair together, which
keeps the dependence between units, so the max over units of ``|diff*|`` is the max-statistic
null (Westfall & Young): ``p_fwer`` controls the family-wise error over all units, and ``q_bh``
is Benjamini–Hochberg over ``p_unit``. A permutation test checks exchangeability, not equal ρ:
two conditions with the same r whose activations differ in shape beyond a shift and a scale can
differ. The standardisation uses each condition's means and norms over all examples, so the swap
is exact for the standardised pairs and close to exact for pairs that differ by a shift and a
scale: on planted nulls of that kind (as ``tests/test_contrast.py`` plants them; 60 to 100 data
sets of 150 units each, B = 99) the share of ``p_unit ≤ 0.05`` was 0.059 at N = 10, 0.058 at
N = 20, 0.052 at N = 40 and 0.049 at N = 60 and N = 160: with a few dozen examples or fewer the
p-values run slightly liberal.

**Memory and time.** Both conditions' activations of every unit at every slot are held on the
CPU in float32, ``8·N·layers·units·slots`` bytes: 1.2 GB for the embedded SmolLM2-135M (30
layers × 1536 neurons × 20 slots) at N = 160, which fits a 24 GiB machine beside the model. The
null runs one layer at a time on the model's device in float64, holding that layer's
standardised activations and their differences (``6·8·N·units·slots`` bytes, 236 MB there) and
one block of permutations (arrays of at most 2^21 entries): about 0.5 GB at its peak, measured.
It costs about ``6·B·N·layers·units·slots`` flops (0.9 TFLOP at B = 999 there), measured at 2 s
per SmolLM2 layer on one CPU thread: a minute for the whole model (a GPU was not measured).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sklens import validate
from sklens.atomic import write_csv, write_text
from sklens.data.example import Example, data_hash
from sklens.data.format import Batch, encode
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import batched_pass, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning import metrics as metrics_mod
from sklens.scanning.metrics import Metric, MetricLike
from sklens.scanning.scan import resolve_layers, values_before_pass
from sklens.stats.inference import q_values
from sklens.stats.measures import spearman
from sklens.stats.ranking import Reduce, check_rule, slot_scores
from sklens.units.sites import Site, SiteLike, resolve_site
from sklens.vocabulary import BASELINES, Baseline

MIN_EXAMPLES = 8  # fewer examples have too few distinct swaps for a p-value to reach 0.05
MIN_PERMUTATIONS = 19  # a permutation p is at least 1/(B+1)
ALPHA = 0.05  # the level the summary counts at
_BLOCK = 1 << 21  # entries per array of one block of permutations (float64: 16 MB)
_EDGE = 1 - 1e-12  # |score| is clamped below 1 before atanh


@dataclass
class Contrast:
    """Every unit's score under the trained prompt and under a baseline, their difference and its
    p-values (``sklens.contrast``).

    ``table`` has one row per unit: ``layer``, ``unit``, ``slot`` (where the trained prompt's
    score is read), ``slot_baseline`` (the baseline's; for ``no_prompt`` position ``k`` of the
    last ``n_slots`` before the slots), ``score_trained``, ``score_baseline``, ``diff``,
    ``p_unit``, ``p_fwer``, ``q_bh`` and ``site``; NaN where a unit never varies in a condition.
    ``settings`` says what was compared. Every number is on the examples given: in-sample when
    those selected the units.
    """

    table: pd.DataFrame
    settings: dict[str, Any]

    def top_k(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` units whose score the trained prompt changes most (largest ``|diff|``)."""
        validate.integer("k", k, minimum=0, meaning="how many units")
        order = self.table["diff"].abs().sort_values(ascending=False, na_position="last")
        return self.table.loc[order.index[:k]].reset_index(drop=True)

    @property
    def rank_correlation(self) -> float:
        """Spearman's ρ between every unit's ``|score|`` under the two conditions (units with a
        score in both): 1 when the baseline ranks the units as the trained prompt does."""
        both = self.table[["score_trained", "score_baseline"]].dropna().abs()
        if len(both) < 3:
            return float("nan")
        trained = torch.tensor(both.score_trained.to_numpy())[:, None]
        return float(spearman(trained, torch.tensor(both.score_baseline.to_numpy()))[0])

    def _top_units(self, column: str, k: int) -> set[tuple[int, int]]:
        order = self.table[column].abs().sort_values(ascending=False, na_position="last")
        top = self.table.loc[order.index[:k]]
        return set(zip(top.layer, top.unit, strict=True))

    def top_k_overlap(self, k: int = 10) -> float:
        """Jaccard overlap of the two conditions' top-``k`` units by ``|score|``."""
        validate.integer("k", k, minimum=1, meaning="how many units")
        a, b = self._top_units("score_trained", k), self._top_units("score_baseline", k)
        return len(a & b) / len(a | b)

    def summary(self, k: int = 10, selected: pd.DataFrame | None = None) -> dict[str, Any]:
        """The numbers a study reports: each prompt's top-``k`` |score| threshold and median
        |score|, how many units pass the FWER and FDR nulls, the rank correlation, the top-``k``
        overlap, and how many of the ``selected`` units (a ``top_k``
        table; default the trained prompt's own top-``k`` by |score|) pass the FWER null."""
        units = self._top_units("score_trained", k) if selected is None else set(
            zip(selected.layer, selected.unit, strict=True)
        )  # fmt: skip
        keys = list(zip(self.table.layer, self.table.unit, strict=True))
        chosen = self.table[[unit in units for unit in keys]]
        return {
            "baseline": self.settings["baseline"],
            "compared": self.settings["compared"],
            "n_units": int(self.table["diff"].notna().sum()),
            # is the high top-k threshold made by the trained prompt, or there without it?
            **{
                f"{stat}_{who}": value(self.table[f"score_{who}"].dropna().abs())
                for who in ("trained", "baseline")
                for stat, value in (
                    ("top_k_threshold", lambda s: float(s.nlargest(k).min())),
                    ("median_abs_score", lambda s: float(s.median())),
                )
            },
            "n_permutations": self.settings["n_permutations"],
            f"n_fwer_{ALPHA}": int((self.table.p_fwer <= ALPHA).sum()),
            f"n_fdr_bh_{ALPHA}": int((self.table.q_bh <= ALPHA).sum()),
            "rank_correlation": self.rank_correlation,
            "top_k": k,
            "top_k_overlap": self.top_k_overlap(k),
            f"n_selected_fwer_{ALPHA}": int((chosen.p_fwer <= ALPHA).sum()),
            "n_selected": len(chosen),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to ``path`` (CSV) and the settings beside it (``.json``), atomically."""
        path = Path(path)
        write_csv(self.table, path)
        write_text(path.with_suffix(".json"), json.dumps(self.settings, indent=2, default=str))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Contrast:
        """A contrast ``save`` wrote."""
        path = Path(path)
        settings = path.with_suffix(".json")
        for needed in (path, settings):
            if not needed.exists():
                raise FileNotFoundError(f"{needed} not found: is {path} a saved sklens.Contrast?")
        fix = f"save the contrast again to {path}"
        return cls(pd.read_csv(path), validate.json_file(settings, fix))


# -- the statistics, from activations -------------------------------------------------------------


@dataclass(frozen=True)
class _Scores:
    """Both conditions' scores of each unit of a layer (one row per permutation, or none for the
    data), with the slot each comes from, and their Fisher-z difference."""

    trained: Tensor
    slot_trained: Tensor
    baseline: Tensor
    slot_baseline: Tensor
    diff: Tensor

    @classmethod
    def of(cls, r_trained: Tensor, r_baseline: Tensor, reduce: Reduce) -> _Scores:
        """The scores from each condition's r ``[..., unit, slot]`` (NaN where undefined)."""
        trained, slot_t = slot_scores(r_trained, reduce)
        baseline, slot_b = slot_scores(r_baseline, reduce)
        diff = trained.clamp(-_EDGE, _EDGE).atanh() - baseline.clamp(-_EDGE, _EDGE).atanh()
        return cls(trained, slot_t, baseline, slot_b, diff)


@dataclass
class _Layer:
    """One layer's contrast: the observed scores, and how the permutations compare with them
    (per unit: how many permutations reach its |diff|; per permutation: its largest |diff*|)."""

    observed: _Scores
    exceed: Int[Tensor, " unit"]
    largest: Float[Tensor, " perm"]


def _standardised(
    acts: Float[Tensor, "n slot unit"], device: torch.device | str
) -> tuple[Float[Tensor, "n unit slot"], Bool[Tensor, "unit slot"]]:
    """Each unit's activations at each slot centred and scaled to unit norm over the examples
    (float64), and where they vary at all (zeros where they do not)."""
    x = acts.to(device, torch.float64).transpose(1, 2)
    centred = x - x.mean(0)
    norm = centred.square().sum(0).sqrt()
    varies = norm > 0
    return torch.where(varies, centred / norm.clamp_min(1e-300), 0.0), varies


def _correlations(
    numerator: Float[Tensor, "*perm cells"], square: Float[Tensor, "*perm cells"]
) -> Float[Tensor, "*perm cells"]:
    """Pearson r of a swapped condition from its sums with the unit-norm metric (``numerator``)
    and its centred sum of squares (``square``); NaN where it no longer varies."""
    return torch.where(square > 1e-12, numerator / square.clamp_min(1e-12).sqrt(), torch.nan)


def _layer_contrast(
    trained: Float[Tensor, "n slot unit"],
    baseline: Float[Tensor, "n slot unit"],
    m: Float[Tensor, " n"],
    swaps: Float[Tensor, "perm n"],
    reduce: Reduce,
) -> _Layer:
    """One layer's observed scores and its share of the null.

    With the standardised activations ``a`` (trained), ``b`` (baseline), the unit-norm centred
    metric ``m`` and a swap ``s`` (1: the example's two conditions exchanged), the trained side
    is ``x = a + s·(b − a)`` and the baseline's ``y = b − s·(b − a)``, so every sum r needs is
    linear in ``s``: ``Σxm = r_a + s·((b−a)m)``, ``Σx = s·(b−a)``, ``Σx² = 1 + s·(b² − a²)`` (and
    mirrored for ``y``). Three products of the swap matrix give every permutation's r of every
    unit at every slot.
    """
    device = m.device
    a, a_varies = _standardised(trained, device)
    b, b_varies = _standardised(baseline, device)
    varies = a_varies & b_varies  # [unit, slot]: r is defined under both conditions
    n, units, slots = a.shape
    r_a = torch.einsum("n,nus->us", m, a).masked_fill(~varies, torch.nan)
    r_b = torch.einsum("n,nus->us", m, b).masked_fill(~varies, torch.nan)
    observed = _Scores.of(r_a, r_b, reduce)
    size = observed.diff.abs()
    d = (b - a).flatten(1)
    d2 = (b.square() - a.square()).flatten(1)
    dm = d * m[:, None]
    exceed = torch.zeros(units, dtype=torch.long, device=device)
    largest = torch.empty(len(swaps), dtype=torch.float64, device=device)
    block = max(1, _BLOCK // (units * slots))
    for start in range(0, len(swaps), block):
        s = swaps[start : start + block]
        sd, sd2, sdm = s @ d, s @ d2, s @ dm
        shift = sd.square() / n
        r_x = _correlations(r_a.flatten() + sdm, 1 + sd2 - shift).view(-1, units, slots)
        r_y = _correlations(r_b.flatten() - sdm, 1 - sd2 - shift).view(-1, units, slots)
        permuted = _Scores.of(r_x, r_y, reduce).diff.abs()
        exceed += (permuted >= size).sum(0)
        largest[start : start + block] = permuted.nan_to_num(-torch.inf).amax(1)
    return _Layer(observed, exceed, largest)


def _unit_metric(values: Float[Tensor, " n"], device: torch.device | str) -> Float[Tensor, " n"]:
    """The metric centred and scaled to unit norm: r is then a dot product."""
    m = values.to(device, torch.float64)
    m = m - m.mean()
    return m / m.norm()


def _swaps(n_permutations: int, n: int, seed: int, device: torch.device | str) -> Tensor:
    """Which examples each permutation swaps: ``[B, n]`` of 0/1, each with probability 1/2."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n_permutations, n), generator=generator)
    return bits.to(device, torch.float64)


def _check_arrays(trained: Tensor, baseline: Tensor, values: Tensor, n_permutations: int) -> None:
    """Refuse activations and values that cannot be contrasted, naming the fix."""
    if trained.shape != baseline.shape:
        raise ValueError(
            f"the trained activations have shape {tuple(trained.shape)} but the baseline's "
            f"{tuple(baseline.shape)}: pass both as [examples, layers, slots, units] of the same "
            "examples, units and number of slots"
        )
    if len(values) != trained.shape[0]:
        raise ValueError(
            f"{len(values)} metric values for {trained.shape[0]} examples: pass one value per "
            "example, in the activations' order"
        )
    _check_counts(trained.shape[0], n_permutations)
    metrics_mod.check_values(values, "values")


def _check_counts(n_examples: int, n_permutations: int) -> None:
    """Refuse too few examples or permutations for a p-value to reach 0.05."""
    if n_examples < MIN_EXAMPLES:
        raise ValueError(
            f"a contrast needs at least {MIN_EXAMPLES} examples (the swaps of fewer cannot give a "
            f"p-value of 0.05), got {n_examples}; pass more examples"
        )
    validate.integer(
        "n_permutations", n_permutations, minimum=MIN_PERMUTATIONS,
        meaning="a permutation p-value is at least 1/(n_permutations + 1)",
    )  # fmt: skip


def contrast_from_activations(
    trained: Float[Tensor, "n layers slots unit"],
    baseline: Float[Tensor, "n layers slots unit"],
    values: Float[Tensor, " n"],
    *,
    n_permutations: int = 999,
    seed: int = 0,
    reduce: Reduce = "max",
    layers: Sequence[int] | None = None,
    site: str = "mlp",
    device: torch.device | str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Contrast:
    """The contrast of activations computed elsewhere (``contrast`` reads them from the model).

    Args:
        trained: each example's activations under the trained prompt,
            ``[examples, layers, slots, units]`` (as ``scan_activations`` takes them).
        baseline: the same examples' activations under the baseline, the same shape.
        values: the metric, one number per example, used for both conditions.
        n_permutations: swaps in the null (at least 19).
        seed: seed of the swaps.
        reduce: the ranking rule (``"max"``, the paper's, or ``"absmax"``).
        layers: the model layers of the second axis (default 0, 1, ...).
        site: the units' site name, for the table's ``site`` column.
        device: where the null is computed (default: the activations').
        settings: what the caller compared, merged into ``Contrast.settings``.

    Returns:
        A ``Contrast`` (the module docstring gives the statistic and the null).
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    _check_arrays(trained, baseline, values, n_permutations)
    check_rule(reduce)
    n, n_layers = trained.shape[:2]
    layers = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layers named for {n_layers} layers of activations")
    device = trained.device if device is None else device
    m = _unit_metric(values, device)
    swaps = _swaps(n_permutations, n, seed, device)
    parts = [
        _layer_contrast(trained[:, j], baseline[:, j], m, swaps, reduce) for j in range(n_layers)
    ]
    table = _table(parts, layers, site, n_permutations)
    described = {
        "baseline": "baseline", "compared": "activations given", "n_examples": n,
        "n_permutations": n_permutations, "seed": seed, "reduce": reduce, "site": site,
        "statistic": "atanh(score_trained) - atanh(score_baseline), two-sided",
        "null": "paired swaps of each example's standardised activations under the two "
        "conditions; p_fwer from the max over units",
    }  # fmt: skip
    return Contrast(table, {**described, **(settings or {})})


def _p_value(reached: Tensor, n_permutations: int, undefined: Tensor) -> Tensor:
    """``(1 + reached) / (B + 1)``, NaN where the unit has no statistic."""
    p = (1 + reached).double() / (n_permutations + 1)
    return p.masked_fill(undefined, torch.nan)


def _table(parts: list[_Layer], layers: list[int], site: str, n_permutations: int) -> pd.DataFrame:
    """Every unit's row, with its per-unit p, its FWER p from the max over all layers' units,
    and its BH q over all units."""
    largest = torch.stack([part.largest for part in parts]).amax(0).sort().values
    columns: dict[str, list[Tensor]] = {}
    for part, layer in zip(parts, layers, strict=True):
        scores, units = part.observed, len(part.exceed)
        size = scores.diff.abs()
        reached = len(largest) - torch.searchsorted(largest, size.contiguous(), right=False)
        undefined = size.isnan()
        for name, value in (
            ("layer", torch.full((units,), layer)),
            ("unit", torch.arange(units)),
            ("slot", scores.slot_trained),
            ("slot_baseline", scores.slot_baseline),
            ("score_trained", scores.trained),
            ("score_baseline", scores.baseline),
            ("diff", scores.diff),
            ("p_unit", _p_value(part.exceed, n_permutations, undefined)),
            ("p_fwer", _p_value(reached, n_permutations, undefined)),
        ):
            columns.setdefault(name, []).append(value.cpu())
    table = pd.DataFrame({name: torch.cat(values).numpy() for name, values in columns.items()})
    table["q_bh"] = q_values(table.p_unit.to_numpy(), "bh")
    table["site"] = site
    return table


# -- the contrast of a model's two conditions ------------------------------------------------------


class _UnitReader:
    """Every unit of ``site`` at ``layers``, at each row's read positions, into ``out[example,
    layer, position, unit]`` (float32, CPU): the soft-prompt slots, or with ``before_slots`` the
    ``n_read`` positions that end where the slots would begin (a pass with no prompt). A part of
    the batched pass (``forward.BatchPart``)."""

    def __init__(self, site: Site, layers: list[int], out: Tensor, *, before_slots: bool):
        self.site, self.layers, self.out, self.before_slots = site, layers, out, before_slots
        self.n_read = out.shape[2]
        self.last_hook = site.hook(layers[-1])
        self.batch: Batch | None = None
        self.positions = torch.empty(0, dtype=torch.long)

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(layer), self._reader(j)) for j, layer in enumerate(self.layers)]

    def start(self, batch: Batch) -> None:
        self.batch = batch
        if self.before_slots:
            offsets = torch.arange(-self.n_read, 0, device=batch.slot_start.device)
            self.positions = batch.slot_start[:, None] + offsets
        else:
            self.positions = batch.read_positions

    def _reader(self, j: int) -> Any:
        layer = self.layers[j]

        def read(activation: Float[Tensor, "batch pos *site"], hook: Any) -> None:
            rows = torch.arange(activation.shape[0], device=activation.device)[:, None]
            picked = activation[rows, self.positions.to(activation.device)]
            units = self.site.units(picked, layer)  # [batch, n_read, unit]
            self.out[torch.tensor(self.batch.indices), j] = units.float().cpu()

        return read


@dataclass(frozen=True)
class _Plan:
    """One contrast, checked and resolved before any pass: the two conditions' prompts (``None``
    for no prompt) and encodings, the metric and its values where known before the passes, the
    units read, and the settings that describe them."""

    model: Model
    prompt: SoftPrompt
    baseline: SoftPrompt | None
    examples: list[Example]
    encoded: list
    baseline_encoded: list
    metric: Metric
    known: Float[Tensor, " n"] | None
    site: Site
    layers: list[int]
    batch_size: int
    progress: bool
    described: dict[str, Any]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The activations held per condition: ``(examples, layers, slots, units)``."""
        return (len(self.examples), len(self.layers), self.prompt.n_slots, self.site.size)


def _baseline(model: Model, prompt: SoftPrompt, baseline: Any) -> tuple[SoftPrompt | None, dict]:
    """The baseline's prompt (``None``: no prompt) and what it is, for the settings."""
    if isinstance(baseline, SoftPrompt):
        if baseline.n_slots != prompt.n_slots:
            raise ValueError(
                f"the baseline prompt has {baseline.n_slots} slots but the trained prompt has "
                f"{prompt.n_slots}: a score's max over slots compares only over as many; pass a "
                f"baseline of {prompt.n_slots} slots, e.g. SoftPrompt.init_for(model, "
                f"{prompt.n_slots}, seed=1)"
            )
        baseline.check_fits(model)
        return baseline, {
            "baseline": "prompt",
            "compared": "the trained prompt against another "
            f"prompt of {prompt.n_slots} slots (seed {baseline.config.seed})",
        }
    if baseline not in BASELINES:
        raise ValueError(
            f"baseline must be 'untrained', 'no_prompt' or a sklens.SoftPrompt, got {baseline!r}"
        )
    n = prompt.n_slots
    if baseline == "no_prompt":
        return None, {"baseline": baseline, "compared": f"the trained prompt's {n} slots against "
                      f"the last {n} positions before the slots, with no prompt"}  # fmt: skip
    config = prompt.config
    init = SoftPrompt.init_for(
        model, n, init=config.init, init_text=config.init_text, seed=config.seed
    )
    return init, {
        "baseline": baseline,
        "compared": f"the trained prompt against its own initialisation ({config.init.value}, "
        f"seed {config.seed})",
    }


def _check_room(encoded: list, n_read: int) -> None:
    """Refuse examples with fewer than ``n_read`` tokens before the slots (no-prompt baseline)."""
    short = [i for i, e in enumerate(encoded) if len(e.prefix) < n_read]
    if short:
        least = min(len(encoded[i].prefix) for i in short)
        raise ValueError(
            f"the no-prompt baseline reads the last {n_read} positions before the slots, but "
            f"{len(short)} example(s) (first: {short[0]}) have only {least} tokens there; use "
            "baseline='untrained', or a prompt of fewer slots"
        )


@dataclass(frozen=True)
class _Options:
    """How ``contrast`` was asked to contrast, besides the model, the prompts, the examples and
    the metric."""

    n_permutations: int
    seed: int
    batch_size: int
    reduce: Reduce
    site: SiteLike | None
    chat_template: bool | None
    progress: bool

    def check(self, n_examples: int) -> None:
        """Raise on too few examples, a bad number or an unknown ranking rule."""
        _check_counts(n_examples, self.n_permutations)
        validate.integer("batch_size", self.batch_size, minimum=1)
        validate.integer("seed", self.seed)
        check_rule(self.reduce)


def _prepare(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
    baseline: Any,
    options: _Options,
) -> _Plan:
    """Check ``contrast``'s arguments, cheapest first and all before any pass that reads
    activations; resolve the baseline, the metric, the site and its layers; encode."""
    arguments.model(model)
    arguments.prompt(prompt, optional=False)
    examples = arguments.examples(examples)
    options.check(len(examples))
    prompt.check_fits(model)
    base, described = _baseline(model, prompt, baseline)
    metric = metrics_mod.resolve(metric, len(examples))
    metric.check(examples)
    site = resolve_site(options.site, model)
    layers = resolve_layers(model, site.layers_in(model) or None)
    site.check_layers(layers, model)
    template = options.chat_template
    encoded = encode(model, examples, prompt.n_slots, chat_template=template)
    baseline_encoded = encoded
    if base is None:
        baseline_encoded = encode(model, examples, 0, chat_template=template)
        _check_room(baseline_encoded, prompt.n_slots)
    known = values_before_pass(model, prompt, examples, metric, options.batch_size)
    if known is not None:
        metrics_mod.check_values(known, metric.name)
    return _Plan(
        model, prompt, base, examples, encoded, baseline_encoded, metric, known, site, layers,
        options.batch_size, options.progress, described,
    )  # fmt: skip


def _read(plan: _Plan, trained: bool) -> tuple[Tensor, Tensor | None]:
    """One condition's activations ``[examples, layers, slots, units]``; for the trained
    prompt with a metric computed from its pass, also the metric's values (else ``None``)."""
    prompt = plan.prompt if trained else plan.baseline
    out = torch.zeros(plan.shape)
    reader = _UnitReader(plan.site, plan.layers, out, before_slots=prompt is None)
    score = trained and plan.known is None
    values = torch.empty(len(plan.examples), dtype=torch.float64)
    for batch, scores in batched_pass(
        plan.model,
        plan.encoded if trained else plan.baseline_encoded,
        plan.prompt.n_slots if prompt is not None else 0,
        with_prompt(prompt, reader),
        batch_size=plan.batch_size,
        logprobs=score,
        stop_after=None if score else reader.last_hook,
        progress=plan.progress,
        desc="contrast: trained" if trained else "contrast: baseline",
    ):
        if score:
            rows = [plan.examples[i] for i in batch.indices]
            values[batch.indices] = plan.metric(rows, batch.indices, scores)
    return out, values if score else None


def _origin(metric: Metric) -> str:
    """Where the metric's values come from, for the settings."""
    if metric.needs_logprobs:
        return "computed in the trained prompt's pass"
    if metric.needs_choices:
        return "from every choice scored with the trained prompt"
    return "known before the passes"


def contrast(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    metric: MetricLike,
    *,
    baseline: Baseline | SoftPrompt = "untrained",
    n_permutations: int = 999,
    seed: int = 0,
    batch_size: int = 8,
    reduce: Reduce = "max",
    site: SiteLike | None = "mlp",
    chat_template: bool | None = None,
    progress: bool = True,
) -> Contrast:
    """Every unit's score under the trained prompt against its score under ``baseline``, on the
    same examples and metric values, with a paired permutation test per unit.

    The module docstring gives what is compared, the statistic, the null and the memory: both
    conditions' activations, ``8·N·layers·units·slots`` bytes (1.2 GB for SmolLM2-135M at N = 160).

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the trained soft prompt.
        examples: the examples (at least 8): those a scan used, to ask about its units.
        metric: anything ``scan`` takes (a ``sklens.metrics`` metric, a spec such as ``"loss"``,
            a callable, one number per example). A metric computed from the model's pass (loss,
            confidence) is computed in the trained prompt's pass and used for both conditions.
        baseline: ``"untrained"`` (the prompt's own initialisation), ``"no_prompt"`` (the last
            ``n_slots`` positions before the slots, no prompt) or a ``SoftPrompt`` of the same
            length.
        n_permutations: swaps in the null (at least 19).
        seed: seed of the swaps.
        batch_size: examples per forward pass.
        reduce: the ranking rule (``"max"``, the paper's, or ``"absmax"``).
        site: what a unit is (``sklens.sites``), as in ``scan``.
        chat_template: use the tokenizer's chat template (default: if it has one).
        progress: show tqdm bars.

    Returns:
        A ``Contrast``: the per-unit table, ``top_k`` by |diff|, ``rank_correlation``,
        ``top_k_overlap``, ``summary``, ``save``.
    """
    options = _Options(n_permutations, seed, batch_size, reduce, site, chat_template, progress)
    plan = _prepare(model, prompt, examples, metric, baseline, options)
    trained, values = _read(plan, trained=True)
    values = plan.known if values is None else values
    metrics_mod.check_values(values, plan.metric.name)
    other, _ = _read(plan, trained=False)
    return contrast_from_activations(
        trained, other, values, n_permutations=n_permutations, seed=seed, reduce=reduce,
        layers=plan.layers, site=plan.site.name, device=model.cfg.device,
        settings={
            **plan.described, "metric": plan.metric.name,
            "metric_values": f"{_origin(plan.metric)}, the same for both conditions",
            "data_hash": data_hash(plan.examples),
        },
    )  # fmt: skip
