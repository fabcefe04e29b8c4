"""What sklens needs of a model, and nothing more.

Public functions take ``model`` first and type it by this Protocol rather than by a concrete class,
so that a ``HookedTransformer`` and a ``TransformerBridge`` in compatibility mode both serve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LensModel(Protocol):
    """A TransformerLens model: hook points by TransformerLens name, a config and a tokenizer."""

    cfg: Any
    tokenizer: Any

    def hooks(
        self,
        fwd_hooks: list[tuple[str | Callable, Callable]] = ...,
        bwd_hooks: list[tuple[str | Callable, Callable]] = ...,
        reset_hooks_end: bool = ...,
        clear_contexts: bool = ...,
    ) -> AbstractContextManager[Any]: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = ...) -> Iterator[torch.nn.Parameter]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
