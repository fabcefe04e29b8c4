"""What sklens needs from a model, as a type: ``Model``.

TransformerLens's ``HookedTransformer`` and ``TransformerBridge`` both satisfy it, so every entry
point is typed without tying it to one class. sklens reads the config's sizes and device, hooks
by name inside a ``hooks(...)`` context (``blocks.{L}.mlp.hook_post``, ``hook_embed``), calls the
model on token ids with an attention mask, and uses the tokenizer to lay out examples
(``sklens.data.format``). Anything else it touches (``embed.W_E`` for text initialisation,
``blocks[L].mlp`` for the hook self-test) is reached through ``sklens.models._compat``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Model(Protocol):
    """A hookable language model (see the module doc)."""

    cfg: Any  # n_layers, d_model, d_mlp, n_ctx, device; TransformerLens types it as its own class
    tokenizer: Any

    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable, Callable]] = ...,
        bwd_hooks: Sequence[tuple[str | Callable, Callable]] = ...,
        reset_hooks_end: bool = ...,
        clear_contexts: bool = ...,
    ) -> AbstractContextManager[Any]: ...

    def parameters(self, recurse: bool = ...) -> Iterator[torch.nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
