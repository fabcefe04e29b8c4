"""Binned mutual information between every unit's slot activation and the metric: a second
selection measure, for the units Pearson's r cannot see.

Pearson r finds units whose activation moves linearly with the metric. A unit whose activation
goes far from its typical value in *either* direction on hard examples (the metric depends on
``|activation|``), or only in a middle range, has r ≈ 0 but a high mutual information.
``scan(..., mi_bins=A)`` estimates it for every (layer, unit, slot) in the correlations' pass:

* **Bins.** Each (layer, unit, slot)'s activation is cut into ``A`` equal-frequency bins whose
  edges are fixed by the first block of the scan's ``SlotBuffer`` (every example when the
  buffer holds them all, else the first ``capacity``): midpoints between the order statistics
  at ``i·rows/A``. The metric is kept as it is when it takes at most ``A`` values (a label, a
  correct/incorrect score), else cut into ``A`` equal-frequency bins of all its values, which are
  known once the pass has run (a loss metric needs no second pass).
* **Estimate.** The plug-in MI in nats from the joint counts ``c[a, m]`` of ``N`` examples,
  ``MI = log N + (Σ c log c − Σ n_a log n_a − Σ n_m log n_m) / N``. Its upward bias, about
  ``(A−1)(M−1) / 2N``, is nearly the same for every unit (their bins are about equally full), so
  it does not reorder units; significance comes from the permutation null, never from the value.
* **Ranking.** A unit's score is its largest MI over the slots: the max-over-slots rule of
  Pearson's ``"max"`` (``sklens.stats.ranking``). MI is never negative, so ``"absmax"`` is the same.
* **Null.** Permuting the metric keeps both marginals, so only ``Σ c log c`` changes. The
  permuted joint counts are one product per layer and chunk of units,
  ``onehot(codes)ᵀ · onehot(metric_bins[π])`` of shape ``[units·(A−1), B·(M−1)]`` (the last row
  and column follow from the marginals); then the max over slots, and for family-wise p over all
  units, in a ``sklens.stats.permutation.PermutationNull``. It uses the seeded permutations of
  the correlations' null, and costs about ``(A−1)(M−1)`` times its products plus one ``xlogy``
  per cell: opt in.

Memory: the bin codes, one byte per example and (layer, unit, slot), ``D·N`` bytes with
``D = layers·d_mlp·slots`` (147 MB for 160 examples on SmolLM2-135M), plus ``4·B·layers·d_mlp``
for the null's scores. Within-group statistics and data-parallel scans are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens import validate
from sklens.stats.permutation import PermutationNull
from sklens.stats.ranking import layer_and_unit
from sklens.stats.slot_buffer import Block


def equal_frequency_edges(
    x: Float[Tensor, "rows units"], n_bins: int
) -> Float[Tensor, "cuts units"]:
    """``n_bins − 1`` edges per column: midpoints between the order statistics at ``i·rows/A``."""
    ordered = x.sort(0).values
    rows = len(x)
    cut = torch.tensor([round(i * rows / n_bins) for i in range(1, n_bins)]).clamp(1, rows - 1)
    return (ordered[cut - 1] + ordered[cut]) / 2


def bin_codes(x: Float[Tensor, "rows units"], edges: Float[Tensor, "cuts units"]) -> Tensor:
    """The bin of each value: how many of its column's edges it exceeds (uint8)."""
    codes = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for edge in edges:
        codes += x > edge
    return codes


def metric_bins(values: Float[Tensor, " n"], n_bins: int) -> Int[Tensor, " n"]:
    """The metric's bin per example: its distinct values when at most ``n_bins``, else
    equal-frequency bins; numbered 0..M−1 with no empty bin."""
    values = values.to(torch.float64)
    levels, codes = torch.unique(values, return_inverse=True)
    if len(levels) > n_bins:
        column = values[:, None]
        codes = bin_codes(column, equal_frequency_edges(column, n_bins))[:, 0].long()
        codes = torch.unique(codes, return_inverse=True)[1]
    return codes


def xlogx(c: Tensor) -> Tensor:
    """``c log c`` with ``0 log 0 = 0``: the entropy terms of counts."""
    return torch.special.xlogy(c, c)


def plug_in(joint: Float[Tensor, "*units a m"]) -> Float[Tensor, "*units"]:
    """Plug-in mutual information (nats) of joint counts."""
    n = joint.sum((-1, -2))
    return (
        n.log()
        + (xlogx(joint).sum((-1, -2)) - xlogx(joint.sum(-1)).sum(-1) - xlogx(joint.sum(-2)).sum(-1))
        / n
    )


class MutualInfoAccumulator:
    """Bins every block's activations (edges fixed by the first block of each layer) and keeps
    the codes; ``result`` turns them and the metric into MI and its permutation null."""

    def __init__(
        self,
        n_examples: int,
        shape: tuple[int, int, int],
        n_bins: int,
        device: torch.device | str = "cpu",
        chunk_bytes: int = 1 << 26,
    ):
        n_layers, d_mlp, n_slots = shape
        self.shape, self.n_bins, self.chunk_bytes = shape, n_bins, chunk_bytes
        self.codes = torch.zeros(
            n_layers, n_examples, n_slots * d_mlp, dtype=torch.uint8, device=device
        )
        self.seen = torch.zeros(n_layers, n_examples, dtype=torch.bool)
        self.edges: list[Tensor | None] = [None] * n_layers  # centred, (cuts, slots·d_mlp)
        self.shift: list[Tensor | None] = [None] * n_layers

    def take(self, block: Block) -> None:
        """Bin a block of layer ``block.layer``; its first block fixes the layer's edges."""
        j = block.layer
        if not len(block.rows):
            return
        if self.edges[j] is None:
            self.edges[j] = equal_frequency_edges(block.centred, self.n_bins)
            self.shift[j] = block.shift
        rows = block.rows.to(self.codes.device)
        self.codes[j, rows] = bin_codes(block.centred, self.edges[j])
        self.seen[j, block.rows] = True

    def result(
        self, values: Float[Tensor, " n"], layers: list[int], perms: Int[Tensor, "B n"] | None
    ) -> MutualInfo:
        """MI per (layer, unit, slot) against ``values``, and its null over ``perms``."""
        n_layers, d_mlp, n_slots = self.shape
        if not bool(self.seen.all()):
            raise RuntimeError("mutual information: some examples' activations were never binned")
        m_codes = metric_bins(values, self.n_bins)
        mi = torch.empty(n_layers, n_slots * d_mlp, dtype=torch.float64)
        null = None if perms is None else torch.empty(len(perms), n_layers, d_mlp)
        for j in range(n_layers):
            mi[j] = self._observed(j, m_codes)
            if null is not None:
                null[:, j] = self._null(j, m_codes, perms).view(len(perms), n_slots, d_mlp).amax(1)
        edges = torch.stack([e.double() + s for e, s in zip(self.edges, self.shift, strict=True)])
        return MutualInfo(
            values=mi.view(n_layers, n_slots, d_mlp).transpose(1, 2).contiguous(),
            edges=edges.view(n_layers, self.n_bins - 1, n_slots, d_mlp).transpose(2, 3).cpu(),
            metric_bins=m_codes,
            layers=list(layers),
            null=None if null is None else PermutationNull({"max": null}, perms),
        )

    def _observed(self, j: int, m_codes: Tensor) -> Float[Tensor, " units"]:
        """Exact joint counts by ``bincount`` over (unit, activation bin, metric bin)."""
        A, M = self.n_bins, int(m_codes.max()) + 1
        codes = self.codes[j].cpu()
        units = codes.shape[1]
        base = torch.arange(units) * (A * M)
        joint = torch.zeros(units * A * M, dtype=torch.float64)
        step = max(1, (1 << 22) // units)
        for r0 in range(0, len(codes), step):
            idx = base + codes[r0 : r0 + step].long() * M + m_codes[r0 : r0 + step, None]
            joint += torch.bincount(idx.flatten(), minlength=units * A * M)
        return plug_in(joint.view(units, A, M))

    def _null(self, j: int, m_codes: Tensor, perms: Tensor) -> Float[Tensor, "B units"]:
        """Permuted MI of every unit. Only ``Σ c log c`` changes under a permutation: the
        product gives the first ``A−1`` activation bins × ``M−1`` metric bins, and the last row,
        column and corner follow from the fixed marginals, each summed where it is computed."""
        A, M = self.n_bins, int(m_codes.max()) + 1
        codes = self.codes[j]
        n, units = codes.shape
        B = len(perms)
        device = codes.device
        permuted = m_codes[perms].to(device)  # (B, n)
        y = (permuted.T[:, :, None] == torch.arange(M - 1, device=device)).float()
        y = y.reshape(n, B * (M - 1))
        n_m = torch.bincount(m_codes, minlength=M).to(device, torch.float32)
        bins = torch.arange(A, device=device)
        n_a = (codes[:, :, None] == bins).sum(0).float()  # (units, A)
        fixed = xlogx(n_a).sum(-1) + xlogx(n_m).sum()  # (units,)
        out = torch.empty(B, units, device=device)
        chunk = max(1, self.chunk_bytes // (4 * B * A * M))
        for u0 in range(0, units, chunk):
            u1 = min(units, u0 + chunk)
            x = (codes[:, u0:u1, None] == bins[: A - 1]).float().view(n, -1)
            part = (x.T @ y).view(u1 - u0, A - 1, B, M - 1)  # c[u, a, b, m], a < A−1, m < M−1
            last_col = n_a[u0:u1, : A - 1, None] - part.sum(-1)  # (u, A−1, B): m = M−1
            last_row = n_m[: M - 1] - part.sum(1)  # (u, B, M−1): a = A−1
            corner = n_a[u0:u1, A - 1, None] - last_row.sum(-1)  # (u, B)
            total = torch.special.xlogy(part, part, out=part).sum((1, 3))
            total += xlogx(last_col).sum(1) + xlogx(last_row).sum(-1) + xlogx(corner)
            out[:, u0:u1] = total.T
        return (math.log(n) + (out - fixed[None]) / n).cpu()


@dataclass
class MutualInfo:
    """Binned mutual information (nats) of every (layer, unit, slot) with the metric.

    ``values[i, u, k]`` is layer ``layers[i]``, unit ``u``, slot ``k``; ``edges`` the activation
    bin edges (``[layers, A−1, d_mlp, slot]``, activation units), ``metric_bins`` each example's
    metric bin, ``null`` the permutation null of the max-over-slots score (or ``None``).
    """

    values: Float[Tensor, "layers d_mlp slot"]
    edges: Float[Tensor, "layers cuts d_mlp slot"]
    metric_bins: Int[Tensor, " n"]
    layers: list[int]
    null: PermutationNull | None = None

    @property
    def n_bins(self) -> int:
        return self.edges.shape[1] + 1

    def scores(self) -> tuple[Float[Tensor, "layers d_mlp"], Int[Tensor, "layers d_mlp"]]:
        """Each unit's largest MI over the slots, and that slot."""
        return self.values.max(-1)

    def p_values(self, method: str = "fwer") -> Float[Tensor, "layers d_mlp"]:
        """``"fwer"``: against the max over all units per permutation; ``"unit"``: against the
        unit's own permuted scores (``PermutationNull``)."""
        if self.null is None:
            raise ValueError(
                "this mutual information has no permutation null: scan with n_permutations=200"
            )
        if method not in ("fwer", "unit"):
            raise ValueError(f"method must be 'fwer' or 'unit', got {method!r}")
        score = self.scores()[0].float()
        return getattr(self.null, f"{method}_p")(score, "max")

    def top_k(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` units of largest MI (in-sample, as ``Scan.top_k``): layer, unit, slot,
        mi (nats); with a null also ``p_fwer`` and ``p_unit``."""
        validate.integer("k", k, minimum=0, meaning="how many units")
        score, slot = self.scores()
        d_mlp = score.shape[1]
        top = score.flatten().topk(min(k, score.numel())).indices
        rows, units = layer_and_unit(top, d_mlp)
        table = pd.DataFrame(
            {
                "layer": [self.layers[r] for r in rows.tolist()],
                "unit": units.tolist(),
                "slot": slot[rows, units].tolist(),
                "mi": score[rows, units].tolist(),
            }
        )
        if self.null is not None:
            table["p_fwer"] = self.p_values("fwer")[rows, units].tolist()
            table["p_unit"] = self.p_values("unit")[rows, units].tolist()
        table.attrs["sample"] = "in-sample: selected and measured on the same examples"
        return table

    def tensors(self) -> dict[str, Tensor]:
        """For ``Scan.save``: the values, edges, metric bins and null scores."""
        out = {
            "mi.values": self.values.contiguous(),
            "mi.edges": self.edges.contiguous(),
            "mi.metric_bins": self.metric_bins.contiguous(),
        }
        if self.null is not None:
            out["mi.null"] = self.null.scores["max"].contiguous()
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], layers: list[int], perms: Tensor | None
    ) -> MutualInfo:
        """The inverse of ``tensors`` (``perms``: the scan's permutations, shared)."""
        null = tensors.pop("mi.null", None)
        return cls(
            values=tensors.pop("mi.values"),
            edges=tensors.pop("mi.edges"),
            metric_bins=tensors.pop("mi.metric_bins"),
            layers=layers,
            null=None if null is None else PermutationNull({"max": null}, perms),
        )


def top_k_overlap(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, object]:
    """How two top-K unit tables agree: the units (layer, unit) in both, in one only, and the
    Jaccard index. The slot is not compared: a unit is selected by its best slot under each
    measure."""
    a = set(zip(first.layer.tolist(), first.unit.tolist(), strict=True))
    b = set(zip(second.layer.tolist(), second.unit.tolist(), strict=True))
    return {
        "k": (len(a), len(b)),
        "shared": sorted(a & b),
        "only_first": sorted(a - b),
        "only_second": sorted(b - a),
        "jaccard": len(a & b) / len(a | b) if a | b else float("nan"),
    }
