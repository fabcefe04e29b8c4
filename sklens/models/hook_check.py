"""Load-time self-test of what ``blocks.L.mlp.hook_post`` means.

sklens calls a neuron's activation what ``hook_post`` records, and that is only the paper's
``(W_in h) * act(W_gate h)`` if the model adapter wires the hook where we think. Adapters have had
wrong neuron hooks, so every loaded model is checked: for a few tokens the activation is recomputed
from the weights and the MLP input, and a model whose hook disagrees is refused.

The MLP input is what the MLP module itself receives (a forward pre-hook on ``blocks[L].mlp``),
so the check does not depend on how a block wires its normalisation: sequential blocks
(``ln2(resid_mid)``), parallel attention and MLP (GPT-NeoX's ``ln2(resid_pre)``, GPT-J's shared
``ln1``), and either backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sklens.models import _compat
from sklens.models.protocol import Model


class HookMeaningError(RuntimeError):
    """``blocks.L.mlp.hook_post`` does not record the MLP's neuron activations."""


_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def check_neuron_hooks(
    model: Model, layers: Sequence[int] | None = None, n_tokens: int = 8, seed: int = 0
) -> float:
    """Recompute neuron activations from the weights and compare with ``hook_post``.

    Args:
        model: a loaded model.
        layers: the layers to check (default: all).
        n_tokens: the length of the random token sequence run through the model.
        seed: the seed of that sequence.

    Returns:
        The largest relative error over the checked layers.

    Raises:
        HookMeaningError: when it exceeds the tolerance of the model's dtype.
    """
    cfg = model.cfg
    if getattr(cfg, "attn_only", False):
        raise HookMeaningError(
            f"{getattr(cfg, 'model_name', 'this model')} is attention-only: it has no MLP "
            "neurons to scan. sklens scans blocks.L.mlp.hook_post; use a model with MLPs"
        )
    act = _ACTIVATIONS.get(cfg.act_fn)
    if act is None:
        raise HookMeaningError(
            f"cannot check neuron hooks for activation {cfg.act_fn!r}; supported: {sorted(_ACTIVATIONS)}"
        )
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.d_vocab, (1, n_tokens), generator=gen).to(cfg.device)
    names = {f"blocks.{L}.mlp.hook_post" for L in layers}
    mlp_in: dict[int, torch.Tensor] = {}

    def keep_input(L: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            mlp_in[L] = (args[0] if args else next(iter(kwargs.values()))).detach()

        return hook

    handles = [
        model.blocks[L].mlp.register_forward_pre_hook(keep_input(L), with_kwargs=True)
        for L in layers
    ]
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    finally:
        for handle in handles:
            handle.remove()
    worst = 0.0
    with torch.no_grad():
        for L in layers:
            h = mlp_in[L].float()
            w_in, w_gate, b_in = (
                None if w is None else w.float() for w in _compat.mlp_weights(model, L)
            )
            if w_gate is not None:
                expected = act(h @ w_gate) * (h @ w_in) + b_in
            else:
                expected = act(h @ w_in + b_in)
            recorded = cache[f"blocks.{L}.mlp.hook_post"].float()
            scale = expected.abs().max().clamp_min(1e-6)
            err = float((recorded - expected).abs().max() / scale)
            worst = max(worst, err)
            tol = 1e-3 if cfg.dtype in (torch.float32, torch.float64) else 3e-2
            if not err <= tol:
                raise HookMeaningError(
                    f"blocks.{L}.mlp.hook_post does not equal act(W_gate h) * (W_in h) recomputed "
                    f"from the weights (relative error {err:.2e} > {tol:.0e}); this TransformerLens "
                    "adapter's neuron hook is wired differently, so neuron scans would be wrong. "
                    "Use another backend (backend='hooked' or 'bridge') or report the architecture"
                )
    return worst
