"""TransformerLens's ``run_with_cache`` in sklens's layout, with the soft prompt in place.

sklens reads activations inside its own batched pass (``sklens.prompt.forward``) and never holds a full
cache. To go further with the rest of TransformerLens (attention patterns, logit lens, path
patching), ``run_with_cache(model, prompt, examples)`` returns what TransformerLens's own
``model.run_with_cache`` returns for those examples tokenized as sklens tokenizes them
(``[BOS][instruction][slots][completion]``, right-padded) with the prompt written into the slots,
and the ``Batch`` that says where each row's slots and completion are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from sklens.data.example import Example
from sklens.data.format import Batch, encode, iter_batches
from sklens.models.protocol import Model
from sklens.prompt.forward import slot_count
from sklens.prompt.soft_prompt import SoftPrompt


def run_with_cache(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    *,
    with_completion: bool = True,
    chat_template: bool | None = None,
    **kwargs: Any,
) -> tuple[Float[Tensor, "batch pos d_vocab"], Any, Batch]:
    """``(logits, cache, batch)`` of one forward pass over ``examples`` with ``prompt`` written in.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt (``None``: the slots are left out, as in a no-prompt baseline).
        examples: one batch: all of them run in one pass.
        with_completion: keep the completions (``False`` ends each row at its slots).
        chat_template: use the tokenizer's chat template (default: if it has one).
        **kwargs: passed to TransformerLens's ``run_with_cache`` (``names_filter``, ``device``,
            ``remove_batch_dim``, ...).

    ``cache`` is TransformerLens's ``ActivationCache``; ``batch.slot_positions`` (``[batch,
    slot]``) indexes its position axis, e.g. ``cache["blocks.3.mlp.hook_post"][rows,
    batch.slot_positions]`` are the activations a scan correlates. Rows are right-padded, so a
    position past ``batch.attention_mask.sum(1)`` is padding.
    """
    examples = list(examples)
    n_slots = slot_count(prompt)
    encoded = encode(model, examples, n_slots, chat_template=chat_template)
    batch = next(
        iter_batches(model, encoded, n_slots, len(examples), with_completion=with_completion)
    )
    if prompt is None:
        logits, cache = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, **kwargs
        )
        return logits, cache, batch
    with prompt.attached(model) as writer:
        writer.start(batch)
        logits, cache = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, **kwargs
        )
    return logits, cache, batch
