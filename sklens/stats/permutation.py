"""Max-statistic permutation null (Nichols & Holmes 2002), accumulated in the scan's own pass.

For B permutations π_b of the metric, the permuted correlations of every (layer, neuron, slot)
are one matrix product per batch: with ``z_b`` the centred, unit-norm permuted metric,
``r_b = Σ_n (a_n − c) z_b[n] / sqrt(M2_a)`` for any shift ``c`` (because ``Σ z_b = 0``), so each
batch adds ``(a − c)ᵀ Z`` with ``Z = [z_1 … z_B]`` of shape ``[n_examples, B]``. The shift ``c`` is
the first batch's mean, which keeps float32 accumulation accurate with large activation offsets.

Memory is ``4·B·layers·d_mlp·slots`` bytes during the pass (B=200 on SmolLM2-135M: 0.74 GB; on
Qwen1.5-1.8B: 2.1 GB); afterwards only the reduced scores ``[B, layers, d_mlp]`` per rule are kept.
Permutations can be restricted to exchangeability blocks (a meta field), e.g. to ask whether a
neuron tracks the metric *within* each operation. Then the statistic is within-group too: the
metric is centred within each block (``Σ z_b = 0`` in every block, so the activations' group means
drop out of ``Σ a z_b``) and the scan divides by the within-group ``M2_a``; observed scores and null
are the same pooled within-group r (``sklens.moments.GroupedMoments``).

What the test tests: exchangeability of the metric with the activations, i.e. **independence**,
not ρ = 0 (with heteroscedastic dependence it can reject while ρ = 0; DiCiccio & Romano 2017).
The max-statistic FWER is strong under subset pivotality. Three kinds of p-value come out:

* ``fwer_p``: family-wise adjusted by the max statistic over all scanned neurons;
* ``neuron_p``: each neuron against its **own** permuted scores, ``(1 + #{b: |s_b| ≥ |s|})/(B+1)``:
  valid per neuron (coarse: at least ``1/(B+1)``), the input for BH/BY;
* ``pooled_p``: against all neurons' permuted scores pooled. Fine-grained but **not** a valid
  p-value per neuron: neurons' nulls differ (slots that vary independently give a wider null of
  the max than identical slots). BH on it controls only an *approximate marginal FDR* under the
  assumption that the neurons' nulls are alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.moments import centre_within, group_codes
from sklens.ranking import RULES, Reduce, slot_scores


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
    """Streaming ``Σ (a − shift) Z`` for every (layer, neuron, slot) and permutation."""

    def __init__(
        self,
        values: Float[Tensor, " n"],
        shape: tuple[int, int, int],
        n_permutations: int,
        *,
        seed: int = 0,
        groups: Sequence[object] | None = None,
        device: torch.device | str = "cpu",
    ):
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
        self.perms = permutations(len(values), n_permutations, seed, groups)
        values = values.to(torch.float64)
        if groups is not None:  # the within-group statistic: centre the metric in each block
            values = centre_within(values, group_codes(list(groups)))
        permuted = values[self.perms].T  # (n, B); within blocks, so block means stay 0
        centred = permuted - permuted.mean(0)
        self.z = (centred / centred.norm(dim=0)).to(device, torch.float32)  # unit-norm columns
        n_layers, d_mlp, n_slots = shape
        self.sums = torch.zeros(n_layers, d_mlp, n_slots, n_permutations, device=device)
        self.shift: dict[int, Tensor] = {}
        self.zsum = torch.zeros(n_permutations, dtype=torch.float64, device=device)  # Σ z over seen

    def fold_layer(
        self, j: int, acts: Float[Tensor, "batch slots d_mlp"], indices: Sequence[int]
    ) -> None:
        a = acts.to(torch.float64).permute(0, 2, 1)  # (b, d_mlp, k)
        if j not in self.shift:
            self.shift[j] = a.mean(0)
        centred = (a - self.shift[j]).float()
        z = self.z[torch.as_tensor(list(indices), device=self.z.device)]  # (b, B)
        self.sums[j] += torch.einsum("ndk,nb->dkb", centred, z)
        if j == 0:
            self.zsum += z.double().sum(0)

    def rebase(self, shift: Float[Tensor, "layers d_mlp slot"]) -> None:
        """Move the sums to a common ``shift`` (so shards with different shifts add up)."""
        for j in range(self.sums.shape[0]):
            own = self.shift.get(j, shift[j])
            delta = (own - shift[j]).to(self.sums.device)  # (d, k)
            self.sums[j] += (delta[..., None] * self.zsum).float()
            self.shift[j] = shift[j]

    def reduce(self, m2_a: Float[Tensor, "layers d_mlp slot"]) -> PermutationNull:
        """Permuted correlations → per-permutation neuron scores under both ranking rules."""
        scale = m2_a.sqrt().to(self.sums.device, torch.float32)[..., None]
        r = torch.where(scale > 0, self.sums / scale, torch.nan).clamp(-1, 1)  # (L, d, k, B)
        r = r.permute(3, 0, 1, 2)  # (B, L, d, k)
        scores = {rule: slot_scores(r, rule)[0].cpu() for rule in RULES}
        return PermutationNull(scores, self.perms)


@dataclass
class PermutationNull:
    """Per-permutation neuron scores ``[B, layers, d_mlp]`` for each rule, and the permutations."""

    scores: dict[str, Float[Tensor, "B layers d_mlp"]]
    perms: Int[Tensor, "B n"]

    @property
    def n_permutations(self) -> int:
        return self.perms.shape[0]

    def max_null(self, reduce: Reduce = "max") -> Float[Tensor, " B"]:
        """The largest ``|score|`` over all neurons in each permutation: the max-statistic null."""
        return self.scores[reduce].abs().nan_to_num(nan=0.0).flatten(1).amax(1)

    def fwer_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Family-wise adjusted p-values: ``(1 + #{b: max_null_b ≥ |score|}) / (1 + B)``."""
        null = self.max_null(reduce).sort().values
        exceed = len(null) - torch.searchsorted(null, score.abs().float().contiguous(), right=False)
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(null)))

    def neuron_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Per-neuron permutation p-values ``(1 + #{b: |s_b| ≥ |s|}) / (1 + B)``, each neuron
        against its own null (valid per neuron; a NaN permuted score counts as 0)."""
        null = self.scores[reduce].abs().nan_to_num(nan=0.0)  # (B, L, d)
        exceed = (null >= score.abs().float()).sum(0)
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(null)))

    def pooled_p(self, score: Float[Tensor, "layers d_mlp"], reduce: Reduce = "max") -> Tensor:
        """Against all neurons' permuted scores pooled: fine resolution, but **not** a valid
        per-neuron p-value (see the module doc); BH on it is an approximate marginal FDR."""
        pooled = self.scores[reduce].abs().flatten()
        pooled = pooled[~pooled.isnan()].sort().values
        exceed = len(pooled) - torch.searchsorted(
            pooled, score.abs().float().contiguous(), right=False
        )
        return torch.where(score.isnan(), torch.nan, (1 + exceed) / (1 + len(pooled)))
