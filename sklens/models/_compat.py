"""Every TransformerLens question in one place.

sklens talks to models through hook names, ``model.hooks(...)``, ``cfg`` and the tokenizer. The few
places where a ``HookedTransformer`` and a ``TransformerBridge`` differ, or where TransformerLens's
loaders need help to run offline, live here, detected by feature rather than by version string, and
imported lazily so that ``import sklens`` never imports a model class it does not need.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sklens.models.protocol import Model


@contextmanager
def hooked_transformer_deprecation_silenced() -> Iterator[None]:
    """TransformerLens 3.x deprecates HookedTransformer in favour of TransformerBridge (4.0).

    sklens supports both on purpose (DESIGN.md: SAELens and users' tools still expect
    HookedTransformer), so exactly that message is silenced where sklens builds one; every other
    deprecation still reaches the user and fails our tests.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="HookedTransformer is deprecated", category=DeprecationWarning
        )
        yield


def is_bridge(model: Model) -> bool:
    """True for a TransformerBridge (which has no ``stop_at_layer`` and unembeds every position)."""
    return hasattr(model, "enable_compatibility_mode")


def embedding_matrix(model: Model) -> torch.Tensor:
    """The token embedding matrix ``[d_vocab, d_model]`` of either backend."""
    w_e = getattr(model, "W_E", None)
    if w_e is None:
        w_e = model.embed.W_E
    return w_e


def mlp_weights(model: Model, layer: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(W_in, W_gate or None, b_in)`` of one MLP in TransformerLens's layout ``[d_model, d_mlp]``."""
    mlp = model.blocks[layer].mlp
    w_gate = getattr(mlp, "W_gate", None) if model.cfg.gated_mlp else None
    b_in = getattr(mlp, "b_in", None)
    if b_in is None:
        b_in = torch.zeros(model.cfg.d_mlp, dtype=mlp.W_in.dtype, device=mlp.W_in.device)
    return mlp.W_in, w_gate, b_in


@contextmanager
def neutral_checkpoint_path(path: str | os.PathLike) -> Iterator[str]:
    """A path to the checkpoint directory whose name carries no model family.

    TransformerLens's ``convert_hf_model_config`` picks architectures by substring of the *name*
    (any path containing "llama" or "gemma" takes a branch that never reads ``config.json`` and
    then fails). A symlink with a neutral name makes it read the checkpoint's own config.
    """
    with tempfile.TemporaryDirectory(prefix="sklens-") as tmp:
        link = Path(tmp) / "checkpoint"
        link.symlink_to(Path(path).resolve(), target_is_directory=True)
        yield str(link)


def hooked_transformer_from_checkpoint(
    path: str, tokenizer: Any, hf_model: Any, *, device: str, dtype: torch.dtype
) -> Any:
    """Build a HookedTransformer from a local HF checkpoint with TransformerLens's own converters.

    The config comes from the checkpoint's ``config.json`` through ``get_pretrained_model_config``
    and the weights through ``get_pretrained_state_dict``; no hub call is made. Weights are left
    unprocessed (no LayerNorm folding or centering) so logits and ``mlp.hook_post`` match HF.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    with neutral_checkpoint_path(path) as neutral:
        cfg = loading.get_pretrained_model_config(neutral, device=device, dtype=dtype)
        state_dict = loading.get_pretrained_state_dict(neutral, cfg, hf_model=hf_model, dtype=dtype)
    cfg.model_name = Path(path).name
    with hooked_transformer_deprecation_silenced():
        model = HookedTransformer(cfg, tokenizer, move_to_device=True)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model


def hooked_transformer_official(name: str, *, device: str, dtype: torch.dtype) -> Any:
    """An official TransformerLens name, loaded with unprocessed weights (hook_post = HF's)."""
    from transformer_lens import HookedTransformer

    with hooked_transformer_deprecation_silenced():
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)


def bridge_from(name_or_path: str, tokenizer: Any, *, device: str, dtype: torch.dtype) -> Any:
    """A TransformerBridge in compatibility mode with unprocessed weights."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name_or_path, device=device, dtype=dtype, tokenizer=tokenizer
    )
    bridge.enable_compatibility_mode(no_processing=True)
    return bridge


def official_repo(name: str) -> str:
    """The Hugging Face repository of an official TransformerLens name or alias."""
    try:  # TransformerLens 3
        from transformer_lens.loading_from_pretrained import get_official_model_name
    except ImportError:  # TransformerLens 4 moved it
        from transformer_lens.supported_models import get_official_model_name

    return get_official_model_name(name)


def has_hooked_transformer() -> bool:
    """Whether this TransformerLens has ``HookedTransformer`` (3.x; 4.0 removed it in favour of
    ``TransformerBridge``, and importing it raises ``ImportError``)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def official_model_names() -> list[str]:
    """TransformerLens's official model names and aliases (no network)."""
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    names = list(OFFICIAL_MODEL_NAMES)
    for aliases in MODEL_ALIASES.values():
        names.extend(aliases)
    return names
