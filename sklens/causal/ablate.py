"""Interventions on selected units: TransformerLens forward hooks on their site's hook
(``blocks.L.mlp.hook_post`` for MLP neurons; ``sklens.sites`` for heads, residual, SAE latents).

Units are anything ``sklens.NeuronSet.of`` reads (a ``top_k`` DataFrame, ``(layer, neuron)``
pairs, a boolean mask ``[n_layers, units]``, a ``{layer: ids}`` dict). An edit computes the new
values of the selected units and the site writes them back (``Site.write``: for an SAE latent
the reconstruction changes and the SAE's error term is kept). Modes:

* ``zero`` — set to 0;  ``mean`` — set to a mean over a reference set (``means``, from
  ``sklens.neuron_stats``): per (neuron, slot) ``[d_mlp, n_slots]`` at the slots (each slot
  takes its own mean), or per neuron ``[d_mlp]`` anywhere;
* ``resample`` — take the activation of another example in the batch (at the same slot, or the
  same absolute position elsewhere), never of the same example;
* ``noise`` — add Gaussian noise of std ``noise_std`` (seeded);
* ``scale`` / ``shift`` — multiply by ``factor`` / add ``shift`` (steering).

``positions`` is ``"slots"`` (the soft-prompt slots, needs the batch), ``"all"``, or a boolean
mask ``[pos]`` or ``[batch, pos]``. The hooks come back as a plain ``fwd_hooks`` list for
``model.hooks(...)`` / ``run_with_hooks``, or applied by the ``ablated(...)`` context manager,
which removes them on exit, also on an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sklens.data.format import Batch
from sklens.models.protocol import Model
from sklens.units.neuron_set import NeuronLike, NeuronSet
from sklens.units.sites import SiteLike
from sklens.vocabulary import ABLATION_MODES as MODES
from sklens.vocabulary import AblationMode, Positions


class NeuronIntervention:
    """Hooks that edit selected neurons. A part of the batched pass
    (``sklens.prompt.forward.BatchPart``): ``start(batch)`` tells them where the slots are and, with
    ``owners`` set, which rows belong to one example."""

    def __init__(
        self,
        model: Model,
        neurons: NeuronLike,
        mode: AblationMode = "zero",
        *,
        positions: Positions | Tensor = "all",
        means: dict[int, Tensor] | Tensor | None = None,
        noise_std: float = 1.0,
        factor: float = 0.0,
        shift: float = 0.0,
        seed: int = 0,
        site: SiteLike | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(positions, str) and positions not in ("slots", "all"):
            raise ValueError(f"positions must be 'slots', 'all' or a bool mask, got {positions!r}")
        chosen = NeuronSet.of(neurons, model, site=site)
        self.index, self.site = chosen.by_layer(), chosen.site
        if mode == "mean":
            if means is None:
                raise ValueError("mode='mean' needs means (see sklens.causal.ablate.neuron_means)")
            missing = [L for L in self.index if L not in means] if isinstance(means, dict) else []
            if missing:
                raise ValueError(f"means lack layers {missing}")
        self.mode, self.positions, self.means = mode, positions, means
        self.noise_std, self.factor, self.shift, self.seed = noise_std, factor, shift, seed
        self.batch: Batch | None = None
        self.row_groups: Tensor | None = None
        self.owners: Sequence[int] | None = None  # example id of each encoded row, if shared
        self._calls = 0

    def start(self, batch: Batch) -> None:
        """The batch the next forward pass runs on (rows grouped by ``owners`` when set)."""
        self.batch = batch
        self.row_groups = (
            None if self.owners is None else torch.tensor([self.owners[i] for i in batch.indices])
        )

    def hooks(self) -> list[tuple[str, Any]]:
        """A plain ``fwd_hooks`` list."""
        return [(self.site.hook(L), self._hook(L, ids)) for L, ids in self.index.items()]

    def _mask(self, act: Tensor) -> Bool[Tensor, "batch pos"]:
        B, T = act.shape[:2]
        if isinstance(self.positions, Tensor):
            mask = self.positions.to(act.device, torch.bool)
            return mask.expand(B, T) if mask.ndim == 1 else mask
        if self.positions == "all":
            return torch.ones(B, T, dtype=torch.bool, device=act.device)
        if self.batch is None:
            raise RuntimeError("positions='slots' needs start(batch) before each forward pass")
        mask = torch.zeros(B, T, dtype=torch.bool, device=act.device)
        mask.scatter_(1, self.batch.slot_positions.to(act.device), True)
        return mask

    def _donors(self, B: int, device: torch.device) -> Tensor:
        """For each row, another row from a different example (a seeded derangement)."""
        groups = self.row_groups if self.row_groups is not None else torch.arange(B)
        gen = torch.Generator().manual_seed(self.seed + self._calls)
        donors = torch.empty(B, dtype=torch.long)
        for b in range(B):
            options = (groups != groups[b]).nonzero().flatten()
            if len(options) == 0:
                raise ValueError(
                    "resample ablation needs at least two different examples per batch"
                )
            donors[b] = options[torch.randint(len(options), (1,), generator=gen)]
        return donors.to(device)

    def _resampled(self, act: Tensor) -> Tensor:
        B, T = act.shape[:2]
        donors = self._donors(B, act.device)
        lengths = (
            self.batch.attention_mask.sum(1).to(act.device)
            if self.batch is not None
            else torch.full((B,), T, device=act.device)
        )
        src = torch.arange(T, device=act.device).expand(B, T).clone()
        src = torch.minimum(src, (lengths[donors] - 1)[:, None])
        if self.batch is not None and self.batch.n_slots > 0:
            slots = self.batch.slot_positions.to(act.device)  # (B, k)
            src.scatter_(1, slots, slots[donors])  # slot k takes the donor's slot k
        return act[donors[:, None], src]  # (B, T, unit)

    def _mean(self, layer: int, idx: Tensor, current: Tensor) -> Tensor:
        """The reference means in ``current``'s shape: per (neuron, slot) means go to their slot."""
        means = self.means[layer].to(current.device, current.dtype)[idx]  # (n,) or (n, k)
        if means.ndim == 1:
            return means.expand_as(current)
        if self.batch is None or self.positions != "slots":
            raise ValueError(
                "per-slot means [d_mlp, n_slots] apply at the slots only: pass positions='slots' "
                "(and start(batch)), or per-neuron means [d_mlp] for other positions"
            )
        slots = self.batch.slot_positions.to(current.device)  # (B, k)
        if means.shape[1] != slots.shape[1]:
            raise ValueError(
                f"means have {means.shape[1]} slots but the prompt has {slots.shape[1]}"
            )
        out = current.clone()
        index = slots[..., None].expand(-1, -1, len(idx))  # (B, k, n)
        return out.scatter(1, index, means.T.expand(len(slots), -1, -1))

    def _hook(self, layer: int, ids: Tensor) -> Any:
        def edit(act: Float[Tensor, "batch pos *site"], hook: Any) -> Tensor:
            units = self.site.units(act, layer)  # (B, T, units): the activation itself for MLP
            idx = ids.to(act.device)
            current = units[..., idx]  # (B, T, n)
            if self.mode == "zero":
                new = torch.zeros_like(current)
            elif self.mode == "mean":
                new = self._mean(layer, idx, current)
            elif self.mode == "resample":
                new = self._resampled(units)[..., idx]
            elif self.mode == "noise":
                gen = torch.Generator(device=act.device).manual_seed(self.seed + 7919 * self._calls)
                noise = torch.randn(
                    current.shape, generator=gen, device=act.device, dtype=act.dtype
                )
                new = current + self.noise_std * noise
            elif self.mode == "scale":
                new = current * self.factor
            else:
                new = current + self.shift
            self._calls += 1
            edited = torch.where(self._mask(act)[..., None], new, current)
            return self.site.write(act, layer, units, idx, edited)

        return edit

    @contextmanager
    def applied(self, model: Model) -> Iterator[NeuronIntervention]:
        """Attach the hooks for the ``with`` block; they are removed even on an exception."""
        with model.hooks(fwd_hooks=self.hooks()):
            yield self


def ablation_hooks(
    model: Model, neurons: NeuronLike, mode: AblationMode = "zero", **kwargs: Any
) -> list[tuple[str, Any]]:
    """``fwd_hooks`` that apply ``mode`` to ``neurons`` (see ``NeuronIntervention`` for options)."""
    return NeuronIntervention(model, neurons, mode, **kwargs).hooks()


@contextmanager
def ablated(
    model: Model, neurons: NeuronLike, mode: AblationMode = "zero", **kwargs: Any
) -> Iterator[NeuronIntervention]:
    """``with ablated(model, neurons, "zero"): ...`` — the hooks live only inside the block."""
    intervention = NeuronIntervention(model, neurons, mode, **kwargs)
    with intervention.applied(model):
        yield intervention
