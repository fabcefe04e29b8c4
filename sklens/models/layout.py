"""The weights held in the memory layout TransformerLens's forward hands to ``F.linear``.

A HookedTransformer stores ``W_in`` as ``[d_model, d_mlp]`` and ``W_Q`` as ``[head, d_model,
d_head]``, but its forward multiplies with the transposes: ``F.linear(x, W_in.T.contiguous())``
in the gated MLP and the unembedding, ``einops.rearrange(W_Q, "h m d -> (h d) m")`` in attention.
Every forward pass therefore copies every weight matrix once (on SmolLM2-135M ~420 MB a pass,
~20% of a training step on CPU; ``benchmarks/profile_train_step.py``).

``linear_layout(model)`` keeps, for the ``with`` block, each of those weights as a *view* of
its transposed copy: the same shape and values, with strides such that the transpose or
rearrangement the forward takes is already contiguous, so ``.contiguous()`` and ``reshape``
return views and nothing is copied. ``F.linear`` reads the very same contiguous matrix it read
before, so outputs are bit-identical (tested). On exit every weight is contiguous again, as a
user's code (``safetensors``, ``.view``) expects. Nested blocks leave the layout to the outer one.

What this does to a user's model, said plainly: sklens's passes over many batches (``scan``,
``train_soft_prompt``, ``attribute``, a study) hold this layout for the duration of the call and
restore it before they return, also on an error. Afterwards every parameter is the same
``nn.Parameter`` object with the same values, shape, strides, dtype and device; only its storage
is new, so a tensor taken from ``param.data`` *before* the call no longer aliases the parameter
after it. Code that relies on such aliasing runs sklens inside ``keep_storage()``, which turns the
layout off (at the cost of one weight copy per forward pass, ~20% of a training step on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

from torch import Tensor, nn

from sklens.models import _compat
from sklens.models.protocol import Model

# the permutation of each weight whose result the forward hands to F.linear, as a contiguous tensor
_TRANSPOSED = (1, 0)  # W.T
_QKV = (0, 2, 1)  # rearrange "head d_model d_head -> (head d_head) d_model"
_OUT = (2, 0, 1)  # rearrange "head d_head d_model -> d_model (head d_head)"
_ENABLED: ContextVar[bool] = ContextVar("sklens_linear_layout", default=True)


@contextmanager
def keep_storage() -> Iterator[None]:
    """Inside, sklens never re-lays the model's weights out: every parameter keeps its storage,
    so tensors aliased from ``param.data`` stay aliased (each forward pass then copies the weights
    it transposes, as TransformerLens's own forward does)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def _flag(cfg: object, name: str) -> bool:
    return bool(getattr(cfg, name, False))


def _targets(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The weights of ``module`` its forward copies into a transposed layout, by parameter name."""
    # HookedTransformer's components (TransformerLens 3; imported only for a HookedTransformer)
    from transformer_lens.components import AbstractAttention, GatedMLP, Unembed

    cfg = getattr(module, "cfg", None)
    if isinstance(module, GatedMLP):
        return {"W_gate": _TRANSPOSED, "W_in": _TRANSPOSED, "W_out": _TRANSPOSED}
    if isinstance(module, Unembed):
        return {"W_U": _TRANSPOSED}
    if isinstance(module, AbstractAttention) and not _flag(cfg, "load_in_4bit"):
        targets: dict[str, tuple[int, ...]] = {}
        if not (_flag(cfg, "use_split_qkv_input") or _flag(cfg, "use_attn_in")):
            targets |= dict.fromkeys(("W_Q", "W_K", "W_V", "_W_K", "_W_V"), _QKV)
        if not _flag(cfg, "use_attn_result"):
            targets["W_O"] = _OUT
        return targets
    return {}


def _laid_out(weight: Tensor, order: tuple[int, ...]) -> Tensor:
    """``weight``'s values with strides making ``weight.permute(order)`` contiguous."""
    inverse = tuple(order.index(i) for i in range(len(order)))
    return weight.detach().permute(order).contiguous().permute(inverse)


@contextmanager
def linear_layout(model: Model) -> Iterator[None]:
    """Hold the weights a HookedTransformer's forward transposes already transposed, for the block.

    A no-op on a TransformerBridge (Hugging Face's modules store ``nn.Linear`` weights as they
    are read) and for weights already laid out by an enclosing block.
    """
    changed: list[nn.Parameter] = []
    if _ENABLED.get() and not _compat.is_bridge(model):
        for module in model.modules():
            for name, order in _targets(module).items():
                weight = module._parameters.get(name)
                if weight is None or weight.dim() != len(order):
                    continue
                if weight.permute(order).is_contiguous() and not weight.is_contiguous():
                    continue  # laid out by an enclosing block
                weight.data = _laid_out(weight, order)
                changed.append(weight)
    try:
        yield
    finally:
        for weight in changed:
            weight.data = weight.data.contiguous()


def linear_layout_for(model: Model, n_passes: int) -> AbstractContextManager[None]:
    """``linear_layout(model)`` for a job of more than two forward passes, else nothing.

    A forward pass copies each laid-out weight once; laying the weights out and back copies each
    twice, so a job of one or two passes would gain nothing.
    """
    return linear_layout(model) if n_passes > 2 else nullcontext()
