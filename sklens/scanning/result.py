"""The result of a scan: streaming moments, metric values, the permutation null if any, and the
settings that made them; ranking rules, significance, and persistence.

Ranking rules (``Scan.scores``): ``"max"`` (the paper's) and ``"absmax"``, defined once in
``sklens.stats.ranking`` for the scan and its null.

Significance (with a permutation null, ``scan(..., n_permutations=B)``): ``p_values("fwer")`` is
family-wise adjusted over all scanned units; ``p_values("unit")`` is each unit's own
permutation p-value (valid per unit, at least ``1/(B+1)``), and ``q_values`` applies BH/BY to
it. ``p_values("pooled")`` pools every unit's null: finer, but not a valid per-unit p, and BH
on it is only an approximate marginal FDR that assumes the units' nulls are alike
(``sklens.stats.permutation``). A permutation test checks independence, not ρ = 0.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from sklens import validate
from sklens.atomic import write_bytes
from sklens.data.example import Example, data_hash
from sklens.scanning.activations import example_record
from sklens.scanning.scan_settings import ScanSettings
from sklens.stats import q_values
from sklens.stats.extremes import Extremes
from sklens.stats.inference import QMethod
from sklens.stats.moments import GroupedMoments, Moments
from sklens.stats.mutual_info import MutualInfo
from sklens.stats.permutation import PermutationNull
from sklens.stats.ranking import RULES, Reduce, layer_and_unit, slot_scores
from sklens.units.sites import Site, rebuild

PMethod = Literal["fwer", "unit", "pooled"]
Correction = Literal["fwer", "fdr_bh", "fdr_by"]


class Scan:
    """The result of a scan: streaming moments, metric values, and the settings that made them.

    ``corr`` is float64 ``[len(layers), unit, slot]``: its first axis runs over the *scanned*
    layers, ``layers`` maps it to model layer indices (all layers by default), and
    ``layer_corr(L)`` indexes by model layer. With ``permutation_groups`` it is the within-group
    r and ``marginal_corr`` the ordinary one.

    A unit planted to track the metric at one slot comes out on top, with a permutation p
    at its floor ``1/(B+1)``:

    >>> import torch, sklens
    >>> g = torch.Generator().manual_seed(0)
    >>> acts = torch.randn(60, 2, 3, 8, generator=g)  # examples, layers, slots, units
    >>> metric = acts[:, 1, 2, 5] + 0.3 * torch.randn(60, generator=g)
    >>> result = sklens.scan_activations(acts, metric, n_permutations=99)
    >>> top = result.top_k(1)
    >>> int(top.layer[0]), int(top.unit[0]), int(top.slot[0])
    (1, 5, 2)
    >>> round(float(result.p_values(method="fwer")[1, 5]), 4)
    0.01
    """

    def __init__(
        self,
        moments: Moments | GroupedMoments,
        metric_values: Tensor,
        settings: ScanSettings,
        null: PermutationNull | None = None,
        extremes: Extremes | None = None,
        mutual_info: MutualInfo | None = None,
        *,
        site: Site | None = None,
        selection_ids: Sequence[str] | None = None,
    ):
        self._site = site
        # example_id of each example the scan ran on (None: not known, e.g. scan_activations)
        self.selection_ids = None if selection_ids is None else tuple(sorted(set(selection_ids)))
        self.moments = moments
        self.metric_values = metric_values
        self.settings = settings
        self.null = null
        self.extremes = extremes
        self.mutual_info = mutual_info

    @property
    def layers(self) -> list[int]:
        return list(self.settings.layers)

    @property
    def site(self) -> Site:
        """What a unit is (``sklens.sites``): pass it to ``causal_check``, ``ablated``, … with
        ids of a site that holds tensors (SAE latents, directions). A loaded scan of such a site
        knows only its name (``settings.site``) and raises here."""
        if self._site is not None:
            return self._site
        rebuilt = rebuild(self.settings.site)
        if rebuilt is None:
            raise ValueError(
                f"this scan was loaded from disk and its site {self.settings.site!r} holds "
                "tensors (an SAE or directions) that are not saved with it: pass site= the same "
                "SAE or Directions to the functions that take its units"
            )
        return rebuilt

    @property
    def n(self) -> int:
        return self.moments.n

    @property
    def corr(self) -> Float[Tensor, "layers unit slot"]:
        """The scan's statistic: Pearson r, or the pooled within-group r when grouped.

        NaN where a unit's activation at a slot never varied over the examples (within the
        groups, when grouped), e.g. a dead SAE latent: there is no r. ``n_constant`` counts
        those entries, and ``top_k`` ranks a unit that is NaN at every slot last (it never
        appears)."""
        return self.moments.corr().cpu()

    @property
    def n_constant(self) -> int:
        """How many (unit, slot) entries of ``corr`` are NaN because the unit's activation at
        that slot never varied over the examples (within the groups, when grouped)."""
        return int((~(self.moments.m2_a > 0)).sum())

    def layer_corr(self, layer: int) -> Float[Tensor, "unit slot"]:
        """``corr`` of model layer ``layer`` (``corr[i]`` is the i-th *scanned* layer)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not scanned; this scan has layers {self.layers}")
        return self.corr[self.layers.index(layer)]

    @property
    def marginal_corr(self) -> Float[Tensor, "layers unit slot"]:
        """Pearson r over all examples (equal to ``corr`` unless the scan was grouped)."""
        if isinstance(self.moments, GroupedMoments):
            return self.moments.marginal().corr().cpu()
        return self.corr

    def scores(
        self, reduce: Reduce = "max"
    ) -> tuple[Float[Tensor, "layers unit"], Int[Tensor, "layers unit"]]:
        """Per-unit score and the slot it comes from (rules: ``sklens.stats.ranking``)."""
        return slot_scores(self.corr, reduce)

    def top_k(self, k: int = 10, reduce: Reduce = "max") -> pd.DataFrame:
        """The ``k`` units with the largest ``|score|``: layer, unit, slot, corr, score.

        ``corr`` is r at ``position``; ``corr_min``/``corr_max`` span r over all positions, which
        shows where the two ranking rules can disagree. Every number here is **in-sample**: it
        comes from the examples that selected the units, so |r| is inflated by the selection
        (``attrs["sample"]`` says so); re-measure on other examples with
        ``sklens.confirm_neurons``.

        Args:
            k: how many units (fewer when fewer have a score).
            reduce: the ranking rule: ``"max"`` (the paper's) or ``"absmax"``.

        Returns:
            One row per unit, best first; with a permutation null also ``p_fwer``,
            ``p_unit`` and ``q_bh``.
        """
        validate.integer("k", k, minimum=0, meaning="how many units")
        score, slot = self.scores(reduce)
        ranked = torch.where(score.isnan(), -1.0, score.abs()).flatten()
        k = min(k, int((~score.isnan()).sum()))
        top = ranked.topk(k).indices
        n_units = score.shape[1]
        rows, units = layer_and_unit(top, n_units)
        corr = self.corr
        layers = self.layers
        pos = slot[rows, units]
        extra = {}
        if self.null is not None:
            extra["p_fwer"] = self.p_values(reduce, "fwer")[rows, units].tolist()
            extra["p_unit"] = self.p_values(reduce, "unit")[rows, units].tolist()
            extra["q_bh"] = self.q_values(reduce, "bh")[rows, units].tolist()
        table = pd.DataFrame(
            {
                "layer": [layers[r] for r in rows.tolist()],
                "unit": units.tolist(),
                "slot": pos.tolist(),
                "corr": corr[rows, units, pos].tolist(),
                "score": score[rows, units].tolist(),
                "corr_min": corr[rows, units].nan_to_num(nan=torch.inf).amin(-1).tolist(),
                "corr_max": corr[rows, units].nan_to_num(nan=-torch.inf).amax(-1).tolist(),
                **extra,
                "site": self.settings.site,  # whose unit ids these are (sklens.sites)
            }
        )
        table.attrs["sample"] = f"in-sample: selected and measured on the same {self.n} examples"
        # explain and confirm_neurons refuse the examples that selected these units
        table.attrs["selection_hash"] = self.settings.data_hash
        table.attrs["selection_ids"] = self.selection_ids
        return table

    def _require_null(self) -> PermutationNull:
        if self.null is None:
            raise ValueError("this scan has no permutation null: run scan(..., n_permutations=200)")
        return self.null

    def p_values(
        self, reduce: Reduce = "max", method: PMethod = "fwer"
    ) -> Float[Tensor, "layers unit"]:
        """Per-unit p-values from the permutation null.

        Args:
            reduce: the ranking rule whose scores are tested.
            method: ``"fwer"``: family-wise adjusted by the max statistic (the top score's null
                over all units). ``"unit"``: uncorrected, each unit against its own permuted
                scores (valid per unit; resolution ``1/(B+1)``). ``"pooled"``: against all
                units' permuted scores pooled — finer, but **not** a valid per-unit p-value;
                it assumes every unit has the same null.
        """
        null = self._require_null()
        score, _ = self.scores(reduce)
        if method == "fwer":
            return null.fwer_p(score, reduce)
        if method == "unit":
            return null.unit_p(score, reduce)
        if method == "pooled":
            return null.pooled_p(score, reduce)
        raise ValueError(f"method must be 'fwer', 'unit' or 'pooled', got {method!r}")

    def q_values(
        self, reduce: Reduce = "max", method: QMethod = "bh", p: PMethod = "unit"
    ) -> Float[Tensor, "layers unit"]:
        """Benjamini–Hochberg (``"bh"``) or –Yekutieli (``"by"``) q-values.

        ``p="unit"`` (default) adjusts the valid per-unit permutation p-values: FDR control
        as BH/BY promise, but no q falls below ``m / (B+1) / (number of units at that p)``, so
        sparse findings need a large B. ``p="pooled"`` adjusts the pooled-null p-values: an
        approximate marginal FDR that assumes all units share one null.
        """
        return torch.from_numpy(q_values(self.p_values(reduce, p).numpy(), method))

    def significant(
        self, alpha: float = 0.05, method: Correction = "fwer", reduce: Reduce = "max"
    ) -> pd.DataFrame:
        """The units that pass ``alpha`` under ``"fwer"``, ``"fdr_bh"`` or ``"fdr_by"``,
        as a ``top_k``-style table with ``p_fwer`` and ``q`` columns, sorted by ``|score|``."""
        if method == "fwer":
            passed = self.p_values(reduce, "fwer") <= alpha
        elif method in ("fdr_bh", "fdr_by"):
            passed = self.q_values(reduce, method[4:]) <= alpha
        else:
            raise ValueError(f"method must be 'fwer', 'fdr_bh' or 'fdr_by', got {method!r}")
        table = self.top_k(int(passed.sum()), reduce)
        return table

    def top_examples(
        self,
        examples: Sequence[Example],
        *,
        layer: int,
        unit: int,
        slot: int,
        n: int | None = None,
        largest: bool = True,
    ) -> pd.DataFrame:
        """A unit's most (``largest=False``: least) activating examples at ``slot``, from the
        extremes the scan kept (``n_extremal``): no model, no pass. Same table as
        ``sklens.top_examples`` (which runs the model, and can average over slots).

        Args:
            examples: the scan's own examples, in the scan's order (checked by their hash).
            layer: the unit's (model) layer; it must have been scanned.
            unit: its index at the scan's site (an MLP neuron's in ``blocks.{layer}.mlp.hook_post``).
            slot: the soft-prompt slot (a ``top_k`` row's ``slot``).
            n: how many (default: all kept, ``settings.n_extremal``).
            largest: the most activating (True) or the least (False).
        """
        validate.integer("layer", layer)
        validate.integer("unit", unit)
        validate.integer("slot", slot)
        if self.extremes is None:
            raise ValueError(
                "this scan kept no extremal examples: scan(..., n_extremal=5), or run "
                "sklens.top_examples(model, prompt, examples, ...) to find them with the model"
            )
        examples = list(examples)
        if self.settings.data_hash is not None and data_hash(examples) != self.settings.data_hash:
            raise ValueError(
                f"these {len(examples)} examples are not the ones this scan ran on (their hash "
                "differs): pass the scan's own examples, in the same order"
            )
        j = self.layers.index(layer) if layer in self.layers else None
        if j is None:
            raise KeyError(f"layer {layer} was not scanned; this scan has layers {self.layers}")
        if not 0 <= slot < self.settings.n_slots or not 0 <= unit < self.settings.n_units:
            raise ValueError(
                f"unit must be in 0..{self.settings.n_units - 1} and slot in "
                f"0..{self.settings.n_slots - 1}, got unit={unit}, slot={slot}"
            )
        ex = self.extremes
        values, rows = (ex.values, ex.rows) if largest else (ex.low_values, ex.low_rows)
        kept = [
            (int(i), float(v))
            for i, v in zip(rows[j, :n, slot, unit], values[j, :n, slot, unit], strict=True)
            if i >= 0
        ]
        return pd.DataFrame(
            [
                {"rank": rank, **example_record(examples[i], i, v)}
                for rank, (i, v) in enumerate(kept)
            ]
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the scan (moments, metric values, settings) to one safetensors file, atomically."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.moments.tensors().items()}
        tensors["metric_values"] = self.metric_values.contiguous()
        if self.null is not None:
            tensors["null_perms"] = self.null.perms.contiguous()
            for rule, scores in self.null.scores.items():
                tensors[f"null_scores_{rule}"] = scores.contiguous()
        if self.extremes is not None:
            tensors |= self.extremes.tensors()
        if self.mutual_info is not None:
            tensors |= self.mutual_info.tensors()
        metadata = {"sklens": json.dumps(self.settings.to_dict())}
        if self.selection_ids is not None:
            metadata[_IDS_KEY] = json.dumps(list(self.selection_ids))
        write_bytes(path, save(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scan:
        """Read a scan written by ``save``, checking every tensor against the saved settings."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: expected a file written by Scan.save")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                metadata = fh.metadata() or {}
            if "sklens" not in metadata:
                raise ValueError(
                    "a safetensors file without sklens settings: not written by Scan.save"
                )
            settings = ScanSettings.from_dict(json.loads(metadata["sklens"]))
            ids = json.loads(metadata[_IDS_KEY]) if _IDS_KEY in metadata else None
            if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) for i in ids)
            ):
                raise ValueError(f"its {_IDS_KEY} metadata is not a list of example ids")
            _check_tensors(tensors, settings)
            values = tensors.pop("metric_values")
            null = None
            if "null_perms" in tensors:
                rules = {
                    k[len("null_scores_") :]: tensors.pop(k)
                    for k in list(tensors)
                    if k.startswith("null_scores_")
                }
                null = PermutationNull(rules, tensors.pop("null_perms"))
            extremes = Extremes.from_tensors(tensors) if settings.n_extremal else None
            mutual_info = None
            if settings.mi_bins:
                perms = null.perms if null is not None else None
                mutual_info = MutualInfo.from_tensors(tensors, list(settings.layers), perms)
            if "group_codes" in tensors:
                moments = GroupedMoments.from_tensors(tensors)
            else:
                moments = Moments.from_tensors(tensors)
        except (SafetensorError, KeyError, TypeError, ValueError, OSError) as err:
            raise ValueError(
                f"{path} is not a readable sklens scan ({type(err).__name__}: {err}); "
                "re-run the scan to recreate it"
            ) from err
        return cls(moments, values, settings, null, extremes, mutual_info, selection_ids=ids)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"Scan(metric={s.metric!r}, n={self.n}, layers={len(self.layers)}, "
            f"site={s.site!r}, n_units={s.n_units}, n_slots={s.n_slots}, model={s.model_name!r})"
        )

    def _repr_html_(self) -> str:
        table = self.top_k(10).to_html(index=False, float_format=lambda x: f"{x:.3f}")
        title = "<p>Top 10 units (paper's rule):</p>"
        return f"<div><p><code>{html.escape(repr(self))}</code></p>{title}{table}</div>"


_IDS_KEY = "sklens.selection_ids"  # the scan file's metadata entry of Scan.selection_ids


def _check_tensors(tensors: dict[str, Tensor], settings: ScanSettings) -> None:
    """Raise ValueError unless the tensors have the shapes and dtypes the settings imply, and
    the moments and metric values are finite (a scan never writes NaN or infinity there).

    A file whose framing is intact but whose tensors disagree would otherwise broadcast into
    plausible-looking correlations, or NaN ones that ``top_k`` silently skips.
    """
    n = settings.n_examples
    grid = (len(settings.layers), settings.n_units, settings.n_slots)
    moments: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        "n": ((), torch.int64),
        "mean_a": (grid, torch.float64),
        "m2_a": (grid, torch.float64),
        "c_am": (grid, torch.float64),
        "mean_m": ((), torch.float64),
        "m2_m": ((), torch.float64),
    }
    expected = {"metric_values": ((n,), torch.float64)}
    counts = ["n"]
    codes = tensors.get("group_codes")
    if codes is None:
        expected |= moments
    else:  # a within-group scan: one set of moments per group (GroupedMoments)
        n_groups = int(codes.max()) + 1 if codes.numel() else 0
        expected["group_codes"] = ((n,), torch.int64)
        expected |= {f"group{g}.{k}": v for g in range(n_groups) for k, v in moments.items()}
        counts = [f"group{g}.n" for g in range(n_groups)]
    if "null_perms" in tensors:
        b = settings.n_permutations
        expected["null_perms"] = ((b, n), torch.int64)
        expected |= {f"null_scores_{rule}": ((b, *grid[:2]), torch.float32) for rule in RULES}
    if settings.n_extremal:
        kept = (grid[0], settings.n_extremal, grid[2], grid[1])  # layers, n, slot, unit
        expected |= {
            f"extremes.{k}{kind}": (kept, dtype)
            for k in ("", "low_")
            for kind, dtype in (("values", torch.float32), ("rows", torch.int64))
        }
    if settings.mi_bins:
        expected |= {
            "mi.values": (grid, torch.float64),
            "mi.edges": ((grid[0], settings.mi_bins - 1, *grid[1:]), torch.float64),
            "mi.metric_bins": ((n,), torch.int64),
        }
        if "null_perms" in tensors:
            expected["mi.null"] = ((settings.n_permutations, *grid[:2]), torch.float32)
    problems = [
        f"{name} is missing"
        if name not in tensors
        else f"{name} has shape "
        f"{tuple(tensors[name].shape)} and dtype {tensors[name].dtype}, expected {shape} {dtype}"
        for name, (shape, dtype) in expected.items()
        if name not in tensors
        or tuple(tensors[name].shape) != shape
        or tensors[name].dtype != dtype
    ]
    problems += [f"{name} is not a scan tensor" for name in tensors.keys() - expected.keys()]
    finite = ["metric_values", *(k for k in expected if k.rsplit(".", 1)[-1] in moments)]
    problems += [
        f"{name} holds {int((~torch.isfinite(tensors[name])).sum())} NaN or infinite values, "
        "which a scan never writes"
        for name in finite
        if name in tensors
        and tensors[name].is_floating_point()
        and not bool(torch.isfinite(tensors[name]).all())
    ]
    total = sum(int(tensors[c]) for c in counts) if not problems else n
    if total != n:
        problems.append(f"n is {total} but the settings say {n} examples")
    if problems:
        raise ValueError("; ".join(problems))
