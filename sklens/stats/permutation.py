"""Max-statistic permutation null (Nichols & Holmes 2002), computed from the scan's own pass.

For B permutations π_b of the metric, the permuted correlations of every (layer, unit, slot)
are matrix products: with ``z_b`` the centred, unit-norm permuted metric,
``r_b = Σ_n (a_n − c) z_b[n] / sqrt(M2_a)`` for any shift ``c`` (because ``Σ z_b = 0``), so a
block of examples adds ``Zᵀ (a − c)`` with ``Z = [z_1 … z_B]`` of shape ``[n_examples, B]``. The
activations come in blocks of a ``SlotBuffer`` (centred on the first batch's mean, which keeps
float32 accurate with large activation offsets), so the product's inner dimension is the block,
not the batch: the ``[B, units]`` state is read and written once per block.

Memory, with ``D = layers·d_mlp·slots`` and ``N`` the examples of this process: a scan whose
buffer holds all ``N`` (the scan's choice when ``N ≤ B``) keeps ``4·D·N`` bytes of activations
and no sums; otherwise ``4·D·(B + capacity)``. Reducing adds the held activations scaled by
``1/sqrt(M2_a)`` (one layer's, ``4·D·N/layers``) and ``3 · chunk_bytes`` (8 MiB chunks of
permutations, one layer at a time; the product is written once and read once, by one
``amax`` and one ``amin`` over the slots), and keeps the reduced scores, ``4·B·layers·d_mlp`` bytes per
ranking rule. So the peak is about ``4·D·min(N, B + capacity) + 8·B·layers·d_mlp + 24 MiB``
(B = 1,000, N = 160 on SmolLM2-135M: 0.59 + 0.37 GB; on Qwen1.5-1.8B: 1.7 + 1.1 GB).
Permutations can be restricted to exchangeability blocks (a meta field), e.g. to ask whether a
neuron tracks the metric *within* each operation. Then the statistic is within-group too: the
metric is centred within each block (``Σ z_b = 0`` in every block, so the activations' group means
drop out of ``Σ a z_b``) and the scan divides by the within-group ``M2_a``; observed scores and null
are the same pooled within-group r (``sklens.stats.moments.GroupedMoments``).

What the test tests: exchangeability of the metric with the activations, i.e. **independence**,
not ρ = 0 (with heteroscedastic dependence it can reject while ρ = 0; DiCiccio & Romano 2017).
The max-statistic FWER is strong under subset pivotality. Three kinds of p-value come out:

* ``fwer_p``: family-wise adjusted by the max statistic over all scanned units;
* ``unit_p``: each unit against its **own** permuted scores, ``(1 + #{b: |s_b| ≥ |s|})/(B+1)``:
  valid per unit (coarse: at least ``1/(B+1)``), the input for BH/BY;
* ``pooled_p``: against all units' permuted scores pooled. Fine-grained but **not** a valid
  p-value per unit: units' nulls differ (slots that vary independently give a wider null of
  the max than identical slots). BH on it controls only an *approximate marginal FDR* under the
  assumption that the units' nulls are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.stats import distributed
from sklens.stats.moments import centre_within, group_codes
from sklens.stats.ranking import RULES, Reduce, from_extremes, slot_scores
from sklens.stats.slot_buffer import Block, SlotBuffer


def permutations(
    n: int, n_permutations: int, seed: int, groups: Sequence[object] | None = None
) -> Int[Tensor, "B n"]:
    """``B`` seeded permutations of ``range(n)``, within blocks of equal ``groups`` if given."""
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        return torch.stack([torch.randperm(n, generator=gen) for _ in range(n_permutations)])
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} examples")
    codes = group_codes(list(groups))
    out = torch.arange(n).repeat(n_permutations, 1)
    for code in range(int(codes.max()) + 1):
        members = (codes == code).nonzero().flatten()
        for b in range(n_permutations):
            out[b, members] = members[torch.randperm(len(members), generator=gen)]
    return out


class PermutationAccumulator:
    """``Σ_n (a_n − shift) z_b[n]`` for every (layer, unit, slot) and permutation ``b``, from the
    blocks of a ``SlotBuffer`` (one matrix product per block and layer).

    The metric values may come after the activations (a loss metric is only known once the pass
    has run): blocks are taken only after ``set_values``, and ``reduce`` folds in what the buffer
    still holds. A scan whose buffer holds all its examples therefore needs no second pass and no
    ``[B, units]`` sums at all: the permuted correlations are computed at the end, ``chunk``
    permutations at a time.

    Memory: ``4·B·layers·d_mlp·slots`` bytes for the sums once a block has been taken (none when
    the buffer held everything), plus ``3 · chunk_bytes`` while reducing.
    """

    def __init__(
        self,
        n_examples: int,
        shape: tuple[int, int, int],
        n_permutations: int,
        *,
        seed: int = 0,
        groups: Sequence[object] | None = None,
        device: torch.device | str = "cpu",
        chunk_bytes: int = 1 << 23,
    ):
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
        self.perms = permutations(n_examples, n_permutations, seed, groups)
        self.groups, self.shape, self.device = groups, shape, device
        n_layers, d_mlp, n_slots = shape
        self.chunk = max(1, min(n_permutations, chunk_bytes // (4 * d_mlp * n_slots)))
        self.z: Tensor | None = None
        self.sums: list[Tensor | None] = [None] * n_layers  # (B, units), relative to the shift
        self.zsum = torch.zeros(n_layers, n_permutations, dtype=torch.float64, device=device)

    @property
    def n_permutations(self) -> int:
        return self.perms.shape[0]

    def set_values(self, values: Float[Tensor, " n"]) -> None:
        """The metric: the columns ``z_b`` are its permutations, centred, with unit norm."""
        values = values.to(torch.float64)
        if self.groups is not None:  # the within-group statistic: centre the metric in each block
            values = centre_within(values, group_codes(list(self.groups)))
        permuted = values[self.perms].T  # (n, B); within blocks, so block means stay 0
        centred = permuted - permuted.mean(0)
        self.z = (centred / centred.norm(dim=0)).to(self.device, torch.float32)

    def _z(self, rows: Tensor) -> Float[Tensor, "rows B"]:
        if self.z is None:
            raise RuntimeError("the permutation null needs the metric values (set_values) first")
        return self.z[rows.to(self.z.device)]

    def take(self, block: Block) -> None:
        """Add a block of layer ``block.layer``: one ``[B, rows] @ [rows, units]`` product."""
        z = self._z(block.rows)
        j = block.layer
        if self.sums[j] is None:
            self.sums[j] = torch.zeros(
                self.n_permutations, block.centred.shape[1], device=block.centred.device
            )
        self.sums[j].addmm_(z.T, block.centred)
        self.zsum[j] += z.double().sum(0)

    def reduce(
        self,
        buffer: SlotBuffer,
        mean_a: Float[Tensor, "layers d_mlp slot"],
        m2_a: Float[Tensor, "layers d_mlp slot"],
    ) -> PermutationNull:
        """Permuted correlations → per-permutation unit scores under both ranking rules.

        ``mean_a`` is the common shift every rank's sums move to before they are added up
        (data-parallel scans); ``m2_a`` the (within-group) sums of squares that normalise them.
        """
        n_layers, d_mlp, n_slots = self.shape
        B = self.n_permutations
        scores = {rule: torch.empty(B, n_layers, d_mlp) for rule in RULES}
        shared = distributed.active()  # ranks hold sums about different shifts
        for j in range(n_layers):
            held = buffer.held(j)
            z_held = self._z(held.rows) if len(held.rows) else None
            scale = m2_a[j].T.flatten().sqrt().to(held.centred.device, torch.float32)  # (k·d)
            dead = scale == 0  # a slot that never varies has no r; left out as in slot_scores
            inv = torch.where(dead, 0.0, 1 / scale)
            dead_units = dead.view(n_slots, d_mlp).any(0).nonzero().flatten()
            # r = Zᵀ(a − c)·inv: scaling the held activations (N rows) instead of the product
            # (B rows) saves a pass over [B, units]
            scaled = held.centred * inv if z_held is not None else None
            for b0 in range(0, B, self.chunk):
                b1 = min(B, b0 + self.chunk)
                if self.sums[j] is None and z_held is not None:  # all held: one product
                    r = torch.mm(z_held[:, b0:b1].T, scaled)
                elif self.sums[j] is None:  # this process scanned no examples
                    r = torch.zeros(b1 - b0, len(inv), device=inv.device)
                else:
                    r = self.sums[j][b0:b1] * inv
                    if z_held is not None:
                        r.addmm_(z_held[:, b0:b1].T, scaled)
                if shared:  # Σ z = 0 over all examples, not over one rank's: a common shift
                    zsum = self.zsum[j, b0:b1].clone()
                    if z_held is not None:
                        zsum += z_held[:, b0:b1].double().sum(0)
                    delta = held.shift - mean_a[j].T.flatten().to(held.shift.device)
                    r.addr_(zsum.float(), delta.float() * inv)
                    distributed.sum_tensor(r)
                r = r.view(b1 - b0, n_slots, d_mlp)
                # element-wise over contiguous slot rows (torch.aminmax here is ~30x slower)
                hi, lo = r.amax(1), r.amin(1)
                for rule in RULES:
                    score = from_extremes(hi, lo, rule)
                    if len(dead_units):
                        dead_slots = dead.view(n_slots, d_mlp)[:, dead_units].T  # (units, k)
                        part = (
                            r[:, :, dead_units].transpose(1, 2).masked_fill(dead_slots, torch.nan)
                        )
                        score[:, dead_units] = slot_scores(part, rule)[0]
                    scores[rule][b0:b1, j] = score.clamp(-1, 1).cpu()
        return PermutationNull(scores, self.perms)


@dataclass
class PermutationNull:
    """Per-permutation unit scores ``[B, layers, d_mlp]`` for each rule, and the permutations."""

    scores: dict[str, Float[Tensor, "B layers d_mlp"]]
    perms: Int[Tensor, "B n"]

    @property
    def n_permutations(self) -> int:
        return self.perms.shape[0]

    def max_null(self, reduce: Reduce = "max") -> Float[Tensor, " B"]:
        """The largest ``|score|`` over all units in each permutation: the max-statistic null."""
        return self.scores[reduce].abs().nan_to_num(nan=0.0).flatten(1).amax(1)

    def fwer_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Family-wise adjusted p-values: ``(1 + #{b: max_null_b ≥ |score|}) / (1 + B)``."""
        null = self.max_null(reduce).sort().values
        exceed = len(null) - torch.searchsorted(null, score.abs().float().contiguous(), right=False)
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(null)))

    def unit_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Per-unit permutation p-values ``(1 + #{b: |s_b| ≥ |s|}) / (1 + B)``, each unit
        against its own null (valid per unit; a NaN permuted score counts as 0)."""
        null = self.scores[reduce].abs().nan_to_num(nan=0.0)  # (B, L, d)
        exceed = (null >= score.abs().float()).sum(0)
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(null)))

    def pooled_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Against all units' permuted scores pooled: fine resolution, but **not** a valid
        per-unit p-value (see the module doc); BH on it is an approximate marginal FDR."""
        pooled = self.scores[reduce].abs().flatten()
        pooled = pooled[~pooled.isnan()].sort().values
        exceed = len(pooled) - torch.searchsorted(
            pooled, score.abs().float().contiguous(), right=False
        )
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(pooled)))
