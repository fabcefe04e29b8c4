"""Where units are read: the *site* of a scan (MLP neurons, attention heads, residual dimensions or
directions, any hook, SAE latents).

A site names one TransformerLens hook per layer and maps that hook's activation ``[batch, pos,
...]`` to units ``[batch, pos, unit]`` (``units``), and a change of some units back into the
activation (``write``), so the scan, extremal examples, ablations, steering and causal checks are
the same code for every site. The sites:

=================  ==================================  =====================================  ======
site               hook                                one unit is                            label
=================  ==================================  =====================================  ======
``"mlp"``          ``blocks.L.mlp.hook_post``          a neuron (the paper's)                 L3 N5
``"heads"``        ``blocks.L.attn.hook_z``            ‖z_h W_O^h‖, the norm of what head h   L3 H5
                                                       writes into the residual stream
``"head_dims"``    ``blocks.L.attn.hook_z``            element h·d_head + d of z (head, dim)  L3 Z37
``"resid"``        ``blocks.L.hook_resid_post``        one residual-stream dimension          L3 R12
``Directions``     any residual hook                   the projection on a given direction    L3 V2
``"blocks.{layer}.…"`` that hook                       one element of its activation          L3 U12
``SAELatents``     the SAE's hook                      one SAE latent (SAELens's ``encode``)  L8 F1234
=================  ==================================  =====================================  ======

Edits go through ``write``: elementwise sites set the element; a direction edit adds the
minimal-norm change that moves the projections (``pinv``); a head's unit is rescaled by scaling
its ``z_h`` (zero removes the head; ``mean`` gives it its mean norm with its direction kept); an
SAE latent edit adds ``decode(new) − decode(old)``, so SAELens's error term (what the SAE does
not reconstruct) is kept. An SAE attached to a ``HookedSAETransformer`` with
``use_error_term=True`` is also reachable as a hook template
(``"blocks.{layer}.hook_resid_post.hook_sae_acts_post"``).

Unit ids carry their site's ``name`` (``Scan.top_k``'s ``site`` column, ``NeuronSet.site``), so
an ablation of SAE latent 12 can never edit MLP neuron 12. ``resolve_site(site, model)`` binds a
site to a model (the head weights, the hook's shape) and checks it before any heavy work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sklens.models.protocol import Model
from sklens.vocabulary import SITE_NAMES

_LAYER = re.compile(r"^blocks\.(\d+)\.")
# sites that hold tensors, by name, while they live: a top_k table's ``site`` column finds its SAE
_HELD: weakref.WeakValueDictionary[str, Site] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class UnitEdit:
    """One call of ``Site.write``: the hook's activation ``act`` at ``layer``, its ``units``
    (``Site.units``), and the units ``idx`` to change to ``new``; each site's ``_write`` takes it
    whole, so the sites share one signature."""

    act: Float[Tensor, "batch pos *site"]
    layer: int
    units: Float[Tensor, "batch pos unit"]
    idx: Int[Tensor, " n"]
    new: Float[Tensor, "batch pos n"]


@dataclass(frozen=True)
class Site:
    """A hook per layer and the map between its activation and units (see the module doc).

    ``template`` is the hook name with ``{layer}``; ``size`` the units per layer once bound to a
    model (``bind``); ``only_layers`` the layers the site exists at (``None``: all).
    """

    name: str
    template: str
    letter: str
    size: int = 0
    only_layers: tuple[int, ...] | None = None

    def hook(self, layer: int) -> str:
        return self.template.format(layer=layer)

    def bind(self, model: Model) -> Site:
        """This site with the model's unit count (and weights it needs); checks it fits."""
        return dataclasses.replace(self, size=self._size(model))

    def _size(self, model: Model) -> int:
        return int(model.cfg.d_mlp)

    def units(
        self, act: Float[Tensor, "batch pos *site"], layer: int
    ) -> Float[Tensor, "batch pos unit"]:
        """The units at every (row, position) of the hook's activation."""
        return act.flatten(2)

    def write(
        self,
        act: Float[Tensor, "batch pos *site"],
        layer: int,
        units: Float[Tensor, "batch pos unit"],
        idx: Int[Tensor, " n"],
        new: Float[Tensor, "batch pos n"],
    ) -> Tensor:
        """``act`` with units ``idx`` (now ``units[..., idx]``) changed to ``new``."""
        return self._write(UnitEdit(act, layer, units, idx, new))

    def _write(self, edit: UnitEdit) -> Tensor:
        """``write`` for this site: the elementwise one sets the elements."""
        act = edit.act
        return act.flatten(2).index_copy(-1, edit.idx, edit.new.to(act.dtype)).view(act.shape)

    def label(self, layer: int, unit: int) -> str:
        return f"L{layer} {self.letter}{unit}"

    def layers_in(self, model: Model | None = None) -> list[int] | None:
        """The layers the site exists at: an SAE sits at some layers only, and so does a hook
        that exists at some (an SAE attached to a ``HookedSAETransformer``); ``None``: any."""
        present = None if self.only_layers is None else list(self.only_layers)
        if model is None:
            return present
        candidates = present if present is not None else range(model.cfg.n_layers)
        return [L for L in candidates if self.hook(L) in model.hook_dict]

    def check_layers(self, layers: list[int], model: Model | None = None) -> None:
        """Raise when one of ``layers`` has no unit of this site (``layers_in``)."""
        present = self.layers_in(model)
        if present == []:
            hint = " (an attention-only model has no MLP neurons: scan site='heads' or 'resid')"
            raise ValueError(
                f"site {self.name!r}: the model has no hook {self.template!r} at any layer"
                f"{hint if self.name == 'mlp' else ''}"
            )
        missing = [L for L in layers if present is not None and L not in present]
        if missing:
            raise ValueError(
                f"site {self.name!r} exists at layers {present}, not at {missing}: pass "
                f"layers={present} (or a subset)"
            )


@dataclass(frozen=True)
class _Resid(Site):
    def _size(self, model: Model) -> int:
        return int(model.cfg.d_model)


@dataclass(frozen=True)
class _HeadDims(Site):
    def _size(self, model: Model) -> int:
        return int(model.cfg.n_heads) * int(model.cfg.d_head)


@dataclass(frozen=True)
class _Heads(Site):
    """One unit per head: ``‖z_h W_O^h‖₂``, the norm of the head's write into the residual."""

    w_o: tuple[Tensor, ...] = field(default=(), repr=False, compare=False)

    def bind(self, model: Model) -> Site:
        w_o = tuple(block.attn.W_O.detach() for block in model.blocks)  # [H, d_head, d_model]
        return dataclasses.replace(self, size=int(model.cfg.n_heads), w_o=w_o)

    def units(
        self, act: Float[Tensor, "batch pos head d_head"], layer: int
    ) -> Float[Tensor, "batch pos head"]:
        w = self.w_o[layer].to(act.device, act.dtype)
        return torch.einsum("bphd,hdm->bphm", act, w).norm(dim=-1)

    def _write(self, edit: UnitEdit) -> Tensor:
        act, idx, new = edit.act, edit.idx, edit.new  # act: [batch, pos, head, d_head]
        old = edit.units[..., idx]
        scale = torch.where(old > 0, new / old.clamp_min(1e-30), torch.ones_like(old))
        scale = torch.where(new == 0, torch.zeros_like(scale), scale)
        factors = torch.ones(act.shape[:3], dtype=act.dtype, device=act.device)
        factors = factors.index_copy(-1, idx, scale.to(act.dtype))
        return act * factors[..., None]


@dataclass(frozen=True)
class Directions(Site):
    """The projections of a residual hook's activation on given directions (one unit each).

    ``vectors`` is ``[n, d_model]`` for every layer, or ``{layer: [n, d_model]}`` (a tensor, a
    NumPy array or a list of lists); they are used as given (normalise them for projections in
    residual units). Each must be finite and nonzero. ``hook`` is a template.
    """

    # by layer, or under key -1 for every layer; and each matrix's pinv, transposed (the lift of
    # a change of projections to the minimal-norm change of the activation), computed once here
    vectors: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)
    lifts: dict[int, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(
        cls, vectors: Tensor | Mapping[int, Tensor], hook: str = "blocks.{layer}.hook_resid_post"
    ) -> Directions:
        per_layer = isinstance(vectors, Mapping)
        by_key = (
            {_layer_key(k): _matrix(v, f"vectors[{k!r}]") for k, v in vectors.items()}
            if per_layer
            else {-1: _matrix(vectors, "vectors")}
        )
        sizes = {tuple(m.shape) for m in by_key.values()}
        if len(sizes) != 1 or any(m.ndim != 2 for m in by_key.values()):
            raise ValueError(
                f"directions must be one [n, d_model] tensor per layer, all the same shape; got "
                f"{sorted(sizes)}"
            )
        digest = hashlib.sha256()
        for key, m in sorted(by_key.items()):
            digest.update(str(key).encode() + m.detach().double().cpu().numpy().tobytes())
        return _held(
            cls(
                name=f"directions:{digest.hexdigest()[:12]}",
                template=hook,
                letter="V",
                size=int(next(iter(by_key.values())).shape[0]),
                only_layers=tuple(sorted(by_key)) if per_layer else None,
                vectors=by_key,
                lifts={k: torch.linalg.pinv(m.detach().double()).T for k, m in by_key.items()},
            )
        )

    def bind(self, model: Model) -> Site:
        width = next(iter(self.vectors.values())).shape[1]
        if width != model.cfg.d_model:
            raise ValueError(
                f"directions have width {width}, the model's d_model is {model.cfg.d_model}"
            )
        return self

    def units(self, act: Float[Tensor, "batch pos d_model"], layer: int) -> Tensor:
        d = self.vectors.get(layer, self.vectors.get(-1))
        return act @ d.to(act.device, act.dtype).T

    def _write(self, edit: UnitEdit) -> Tensor:
        act, idx = edit.act, edit.idx
        lift = self.lifts.get(edit.layer, self.lifts.get(-1)).to(act.device)[idx.to(act.device)]
        delta = (edit.new - edit.units[..., idx]).to(torch.float64) @ lift  # [n, d_model] rows
        return act + delta.to(act.dtype)


def _layer_key(key: Any) -> int:
    if isinstance(key, Integral) and not isinstance(key, bool):
        return int(key)
    raise TypeError(f"the keys of vectors must be layer numbers, got {key!r}")


def _matrix(value: Any, name: str) -> Tensor:
    """One ``[n_directions, d_model]`` matrix of directions as a tensor (an array or a list of
    lists is converted), refusing a single vector, NaN or infinite entries and zero rows."""
    if isinstance(value, np.ndarray) or (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(row, (list, tuple, np.ndarray, Tensor)) for row in value)
    ):
        try:
            value = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a [n_directions, d_model] matrix of numbers: {err}"
            ) from None
    if not isinstance(value, Tensor):
        what = (
            "a list of numbers (one vector)"
            if isinstance(value, (list, tuple))
            else type(value).__name__
        )
        raise TypeError(
            f"{name} must be a [n_directions, d_model] matrix (a tensor, an array or a list of "
            f"lists), got {what}: pass one direction as [vector]"
        )
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.ndim != 2:
        return value  # Directions.of names the shapes it got
    if not value.is_floating_point():
        value = value.to(torch.float32)
    bad = (~torch.isfinite(value)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{name} holds NaN or infinite values (direction {bad[0]}): pass finite directions"
        )
    zero = (value.detach().double().norm(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(
            f"{name}: direction {zero[0]} has zero norm, so its projection is 0 for every "
            "activation: drop it, or pass a nonzero vector"
        )
    return value


@dataclass(frozen=True)
class _Hook(Site):
    """Any hook whose activation is ``[batch, pos, ...]``: one unit per trailing element."""

    def bind(self, model: Model) -> Site:
        layers = self.only_layers or range(model.cfg.n_layers)
        layer = next((L for L in layers if self.hook(L) in model.hook_dict), layers[0])
        return dataclasses.replace(self, size=_width(model, self.template, layer))


@dataclass(frozen=True)
class SAELatents(Site):
    """SAE latents through SAELens: ``encode`` runs on the hook's activation the SAE was trained
    on (``sae.cfg.metadata.hook_name``, or ``hook=``); an edit adds ``decode(new) − decode(old)``,
    keeping the SAE's error term. ``saes``: one SAE, a list of them (each at the layer its hook
    names), or ``{layer: SAE}``."""

    saes: Mapping[int, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, saes: Any, hook: str | None = None) -> SAELatents:
        if isinstance(saes, Mapping):
            listed = list(saes.items())
        else:  # one SAE, or several, each at the layer its hook_name says
            listed = [(None, sae) for sae in (saes if isinstance(saes, (list, tuple)) else [saes])]
        by_layer: dict[int, Any] = {}
        templates = set()
        for key, sae in listed:
            if not (hasattr(sae, "encode") and hasattr(sae, "decode") and hasattr(sae, "cfg")):
                raise TypeError(
                    f"an SAE must be a SAELens SAE (encode, decode, cfg); got {type(sae)}"
                )
            name = hook or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
            if name is None:
                raise ValueError(
                    "the SAE does not say which hook it reads (sae.cfg.metadata.hook_name is "
                    "None): pass hook='blocks.{layer}.hook_resid_post' (its hook, with {layer})"
                )
            match = _LAYER.match(name.format(layer=key if key is not None else 0))
            layer = key if key is not None else (int(match.group(1)) if match else None)
            if layer is None:
                raise ValueError(
                    f"cannot tell the SAE's layer from its hook {name!r}: pass {{layer: sae}}"
                )
            by_layer[int(layer)] = sae
            templates.add(_LAYER.sub("blocks.{layer}.", name.format(layer=layer), count=1))
        widths = {int(s.cfg.d_sae) for s in by_layer.values()}
        if len(templates) != 1 or len(widths) != 1:
            raise ValueError(
                f"the SAEs read different hooks {sorted(templates)} or have different widths "
                f"{sorted(widths)}: scan them as separate sites"
            )
        digest = hashlib.sha256()
        for layer, sae in sorted(by_layer.items()):
            w = sae.W_dec.detach().float().cpu()
            digest.update(
                f"{layer}:{tuple(w.shape)}".encode() + w.flatten()[:4096].numpy().tobytes()
            )
        return _held(
            cls(
                name=f"sae:{digest.hexdigest()[:12]}",
                template=templates.pop(),
                letter="F",
                size=widths.pop(),
                only_layers=tuple(sorted(by_layer)),
                saes=by_layer,
            )
        )

    def bind(self, model: Model) -> Site:
        for layer, sae in self.saes.items():
            if not 0 <= layer < model.cfg.n_layers:
                raise ValueError(f"the SAE reads layer {layer}; the model has {model.cfg.n_layers}")
            width = _width(model, self.template, layer)
            if width != int(sae.cfg.d_in):
                raise ValueError(
                    f"the SAE of layer {layer} takes inputs of width {sae.cfg.d_in}, but "
                    f"{self.hook(layer)!r} has {width} values per position: an SAE of another "
                    "model or hook"
                )
        return self

    def units(self, act: Tensor, layer: int) -> Float[Tensor, "batch pos latent"]:
        sae = self.saes[layer]
        return sae.encode(act.to(sae.W_dec.dtype)).flatten(2)

    def _write(self, edit: UnitEdit) -> Tensor:
        sae, units, act = self.saes[edit.layer], edit.units, edit.act
        edited = units.index_copy(-1, edit.idx, edit.new.to(units.dtype))
        change = sae.decode(edited) - sae.decode(units)
        return act + change.reshape(act.shape).to(act.dtype)


def _width(model: Model, template: str, layer: int) -> int:
    """Values per position of a ``[batch, pos, ...]`` hook, from one forward pass of 7 tokens;
    a ValueError naming the fix for a missing hook or one without a position axis."""
    name = template.format(layer=layer)
    if name not in model.hook_dict:
        named = re.match(r"blocks\.(\d+)\.", name)
        if named and int(named.group(1)) >= model.cfg.n_layers:
            raise ValueError(
                f"site {template!r}: the model has no hook {name!r}: it has "
                f"{model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1}); write "
                "'blocks.{layer}.…' to scan every layer"
            )
        near = [h for h in model.hook_dict if h.startswith(f"blocks.{layer}.")][:12]
        raise ValueError(
            f"site {template!r}: the model has no hook {name!r}; hooks of layer {layer} "
            f"include {near}"
        )
    tokens = torch.ones(1, 7, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    shape = tuple(cache[name].shape)
    if shape[:2] != (1, 7) or len(shape) < 3:
        raise ValueError(
            f"site {template!r}: the hook's activation has shape {shape} for 1 row of 7 tokens, "
            "not [batch, pos, ...], so it has no value per position to scan; choose a hook with "
            "positions on the second axis (e.g. attn.hook_z, not attn.hook_pattern)"
        )
    return int(torch.Size(shape[2:]).numel())


MLP = Site("mlp", "blocks.{layer}.mlp.hook_post", "N")
_NAMED: dict[str, Site] = {
    "mlp": MLP,
    "heads": _Heads("heads", "blocks.{layer}.attn.hook_z", "H"),
    "head_dims": _HeadDims("head_dims", "blocks.{layer}.attn.hook_z", "Z"),
    "resid": _Resid("resid", "blocks.{layer}.hook_resid_post", "R"),
}

SiteLike = Site | str | Any  # a Site, a name or hook template, or SAELens SAEs (site_of)


def hook_site(template: str) -> Site:
    """A site of one unit per element of any ``[batch, pos, ...]`` hook, named by a template
    with ``{layer}`` (or a single hook name, which scans that one layer)."""
    if "{layer}" in template:
        return _Hook(template, template, "U")
    match = _LAYER.match(template)
    if match is None:
        raise ValueError(
            f"site {template!r} is neither {list(SITE_NAMES)} nor a hook template: write the layer as "
            "{layer}, e.g. 'blocks.{layer}.hook_resid_mid'"
        )
    layer = int(match.group(1))
    general = _LAYER.sub("blocks.{layer}.", template, count=1)
    return _Hook(template, general, "U", only_layers=(layer,))


def site_of(site: SiteLike | None) -> Site:
    """A ``Site`` from what a user passes (unbound): a name, a template, a Site, or SAEs."""
    if site is None:
        return MLP
    if isinstance(site, Site):
        return site
    if isinstance(site, str):
        return _NAMED.get(site) or hook_site(site)
    return SAELatents.of(site)


def resolve_site(site: SiteLike | None, model: Model) -> Site:
    """``site_of(site)`` bound to ``model``: its unit count and the weights it needs, checked."""
    return site_of(site).bind(model)


def unit_label(site_name: str, layer: int, unit: int) -> str:
    """A unit's label from its site's name alone (``L3 N5``, ``L3 H5``, ``L8 F1234``), as tables
    that carry a ``site`` column are labelled."""
    kind = (
        "F"
        if site_name.startswith("sae:")
        else "V"
        if site_name.startswith("directions:")
        else None
    )
    return f"L{layer} {kind}{unit}" if kind else site_of(site_name).label(layer, unit)


def unit_slot_label(site_name: str, layer: int, unit: int, slot: int, word: str = "slot") -> str:
    """A unit at a soft-prompt slot, ``unit_label`` then ``@{word}{slot}``: ``L3 N5 @slot2`` in
    tables and summaries (``explain``, ``counterfactual``), ``L3 N5 @soft2`` in views (``viz``),
    as each has been written to runs and reports."""
    return f"{unit_label(site_name, layer, unit)} @{word}{slot}"


def site_names(table: Any) -> list[str]:
    """Each row's site name: a table's ``site`` column, or MLP neurons for a table without one."""
    return list(table["site"]) if "site" in table.columns else ["mlp"] * len(table)


def _held(site: Site) -> Site:
    _HELD[site.name] = site
    return site


def rebuild(name: str) -> Site | None:
    """The site of a saved ``name``: builtins and hook templates from the name alone, a site that
    holds tensors (directions, SAEs) while its object lives in this process; else ``None``."""
    if name.startswith(("sae:", "directions:")):
        return _HELD.get(name)
    return site_of(name)
