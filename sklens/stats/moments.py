"""Streaming co-moments of activations and a metric, merged batch by batch (Chan et al., 1979).

Pearson's r needs the counts, means, sums of squared deviations and the co-moment. Each batch is
centred on its own mean (float32) and merged into the float64 running state with the pairwise
update, which stays accurate when activations carry large offsets (where the textbook
``Σa² - (Σa)²/n`` formula cancels catastrophically). States from different shards merge the
same way, so data-parallel scans combine exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from jaxtyping import Float
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; asynchronous where the copy goes to a GPU (a copy to the CPU is
    kept synchronous: the CPU would otherwise read it before it has arrived)."""
    return tensor.to(device, non_blocking=device.type == "cuda")


@dataclass
class Moments:
    """Running statistics for ``[layers, d_mlp, n_slots]`` activation series and one metric."""

    n: int
    mean_a: Float[Tensor, "layers d_mlp slot"]
    m2_a: Float[Tensor, "layers d_mlp slot"]
    c_am: Float[Tensor, "layers d_mlp slot"]
    mean_m: float
    m2_m: float

    @classmethod
    def zeros(cls, n_layers: int, d_mlp: int, n_slots: int, device: torch.device | str) -> Moments:
        def z() -> Tensor:
            return torch.zeros(n_layers, d_mlp, n_slots, dtype=torch.float64, device=device)

        return cls(0, z(), z(), z(), 0.0, 0.0)

    @property
    def device(self) -> torch.device:
        """Where the state lives (every incoming batch is moved here)."""
        return self.mean_a.device

    def fold_layer(
        self, j: int, acts: Float[Tensor, "batch slots d_mlp"], m: Float[Tensor, " batch"]
    ) -> None:
        """Merge one batch of layer ``j``'s slot activations; call ``fold_metric`` after all layers.

        The batch's own statistics are float32 (or the activations' precision, if higher): centred
        on the batch's mean, their rounding is relative to the batch's spread, not to the
        activations' offset. Only the merge into the running state is float64, on
        ``[d_mlp, slots]`` per layer instead of the whole batch.

        The batch is moved to the state's device first: in a model split across devices
        (TransformerLens ``n_devices > 1``, a Hugging Face ``device_map``) later layers'
        activations live on another GPU than the state.
        """
        a = to_device(acts, self.device)
        a = a if a.dtype in (torch.float32, torch.float64) else a.float()
        m = to_device(m, self.device).to(torch.float64)
        nb, na = a.shape[0], self.n
        n = na + nb
        mean_b = a.mean(0)  # (k, d_mlp), as the hooks hand it over: contiguous ops
        centred = a - mean_b
        mc = (m - m.mean()).to(a.dtype)
        m2_b = centred.square().sum(0)
        c_b = (mc @ centred.flatten(1)).view_as(mean_b)
        delta_a = mean_b.T.double() - self.mean_a[j]  # (d_mlp, k), the state's layout
        delta_m = float(m.mean()) - self.mean_m
        w = na * nb / n
        self.m2_a[j] += m2_b.T.double() + delta_a.square() * w
        self.c_am[j] += c_b.T.double() + delta_a * (delta_m * w)
        self.mean_a[j] += delta_a * (nb / n)

    def fold_metric(self, m: Float[Tensor, " batch"]) -> None:
        """Merge the batch's metric values and advance the count."""
        m = m.to(torch.float64)
        nb, na = m.shape[0], self.n
        n = na + nb
        delta = float(m.mean()) - self.mean_m
        self.m2_m += float((m - m.mean()).pow(2).sum()) + delta**2 * na * nb / n
        self.mean_m += delta * nb / n
        self.n = n

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of two disjoint sets of examples."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        w = self.n * other.n / n
        delta_a = other.mean_a - self.mean_a
        delta_m = other.mean_m - self.mean_m
        return Moments(
            n=n,
            mean_a=self.mean_a + delta_a * (other.n / n),
            m2_a=self.m2_a + other.m2_a + delta_a.pow(2) * w,
            c_am=self.c_am + other.c_am + delta_a * (delta_m * w),
            mean_m=self.mean_m + delta_m * other.n / n,
            m2_m=self.m2_m + other.m2_m + delta_m**2 * w,
        )

    def corr(self) -> Float[Tensor, "layers d_mlp slot"]:
        """Pearson r; NaN where an activation series has zero variance (a dead neuron)."""
        denom = (self.m2_a * self.m2_m).sqrt()
        r = self.c_am / denom
        r = torch.where(self.m2_a > 0, r, torch.nan)
        return r.clamp(-1.0, 1.0)

    def std_a(self) -> Float[Tensor, "layers d_mlp slot"]:
        return (self.m2_a / max(self.n, 1)).sqrt()

    def tensors(self) -> dict[str, Tensor]:
        """All state as tensors (for safetensors); float scalars stay float64, so a saved scan
        reloads to exactly the same correlations."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                value = torch.tensor(value, dtype=torch.float64)
            out[f.name] = value if isinstance(value, Tensor) else torch.tensor(value)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Moments:
        return cls(
            n=int(tensors["n"]),
            mean_a=tensors["mean_a"],
            m2_a=tensors["m2_a"],
            c_am=tensors["c_am"],
            mean_m=float(tensors["mean_m"]),
            m2_m=float(tensors["m2_m"]),
        )


class GroupedMoments:
    """Moments of each group of examples, for the **within-group** correlation.

    ``corr`` is the pooled within-group Pearson r, ``Σ_g C_g / sqrt(Σ_g M2a_g · Σ_g M2m_g)``: the
    correlation of group-centred activations with the group-centred metric, which is the partial
    correlation on group indicators. A neuron that only tracks the group (its mean differs between
    groups) scores ~0; one that tracks the metric inside the groups scores high. ``marginal()``
    merges the groups back into the ordinary moments. ``codes[n]`` is each example's group.
    """

    def __init__(self, groups: list[Moments], codes: Tensor):
        self.groups, self.codes = groups, codes

    @classmethod
    def zeros(
        cls, codes: Tensor, n_layers: int, d_mlp: int, n_slots: int, device: torch.device | str
    ) -> GroupedMoments:
        n_groups = int(codes.max()) + 1 if len(codes) else 0
        return cls(
            [Moments.zeros(n_layers, d_mlp, n_slots, device) for _ in range(n_groups)], codes
        )

    def _parts(self, rows: list[int]) -> list[tuple[int, Tensor]]:
        codes = self.codes[torch.as_tensor(rows)]
        return [(int(g), (codes == g).nonzero().flatten()) for g in codes.unique()]

    def fold_layer(
        self,
        j: int,
        acts: Float[Tensor, "batch slots d_mlp"],
        m: Float[Tensor, " batch"],
        rows: list[int],
    ) -> None:
        """Merge one batch of layer ``j`` (example ids ``rows``) into each group's moments."""
        for g, sel in self._parts(rows):
            self.groups[g].fold_layer(j, acts[sel.to(acts.device)], m[sel.to(m.device)])

    def fold_metric(self, m: Float[Tensor, " batch"], rows: list[int]) -> None:
        for g, sel in self._parts(rows):
            self.groups[g].fold_metric(m[sel.to(m.device)])

    def marginal(self) -> Moments:
        """The ordinary (all examples pooled) moments."""
        merged = self.groups[0]
        for other in self.groups[1:]:
            merged = merged.merge(other)
        return merged

    @property
    def n(self) -> int:
        return sum(g.n for g in self.groups)

    @property
    def mean_a(self) -> Float[Tensor, "layers d_mlp slot"]:
        return self.marginal().mean_a

    @property
    def m2_a(self) -> Float[Tensor, "layers d_mlp slot"]:
        """Within-group sum of squared activation deviations (the null's denominator too)."""
        return sum(g.m2_a for g in self.groups)

    @property
    def c_am(self) -> Float[Tensor, "layers d_mlp slot"]:
        return sum(g.c_am for g in self.groups)

    @property
    def m2_m(self) -> float:
        return sum(g.m2_m for g in self.groups)

    def corr(self) -> Float[Tensor, "layers d_mlp slot"]:
        """Pooled within-group r; NaN where activations do not vary within groups."""
        m2_a = self.m2_a
        r = self.c_am / (m2_a * self.m2_m).sqrt()
        return torch.where(m2_a > 0, r, torch.nan).clamp(-1.0, 1.0)

    def std_a(self) -> Float[Tensor, "layers d_mlp slot"]:
        return self.marginal().std_a()

    def tensors(self) -> dict[str, Tensor]:
        out = {"group_codes": self.codes.cpu()}
        for g, part in enumerate(self.groups):
            out |= {f"group{g}.{k}": v for k, v in part.tensors().items()}
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> GroupedMoments:
        codes = tensors["group_codes"]
        n_groups = int(codes.max()) + 1 if len(codes) else 0
        groups = [
            Moments.from_tensors(
                {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"group{g}.")}
            )
            for g in range(n_groups)
        ]
        return cls(groups, codes)


def group_codes(labels: list[object]) -> Tensor:
    """Integer codes ``0..G-1`` for group labels, in order of first appearance."""
    index = {g: i for i, g in enumerate(dict.fromkeys(labels))}
    return torch.tensor([index[g] for g in labels], dtype=torch.long)


def centre_within(values: Float[Tensor, " n"], codes: Tensor) -> Float[Tensor, " n"]:
    """``values`` minus the mean of their group (float64)."""
    values = values.to(torch.float64)
    sums = torch.zeros(int(codes.max()) + 1, dtype=torch.float64).index_add_(0, codes, values)
    return values - (sums / torch.bincount(codes))[codes]
