"""``sklens.run_with_cache``: TransformerLens's own cache of sklens's layout with the prompt in
place, against one unpadded ``run_with_cache`` per example with the prompt written by a hook made
in the test, and against ``sklens.slot_activations``."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache

import sklens
from tests.helpers import arithmetic_examples, reference_cache


@pytest.mark.parametrize("model_name", ["qwen", "llama"])
def test_cache_equals_one_unpadded_run_per_example(model_name, request):
    model = request.getfixturevalue(model_name)
    examples = arithmetic_examples(5, seed=8)
    prompt = sklens.SoftPrompt.init_for(model, 3, seed=1)
    names = {"blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern"}
    logits, cache, batch = sklens.run_with_cache(
        model, prompt, examples, names_filter=lambda name: name in names
    )
    assert isinstance(cache, ActivationCache) and names <= set(cache.keys())
    for alias in set(cache.keys()) - names:  # TransformerLens 4's bridge adds alias names
        assert any(torch.equal(cache[alias], cache[name]) for name in names)
    lengths = batch.attention_mask.sum(1)
    for row, example in enumerate(examples):
        ids, start, ref_logits, ref = reference_cache(model, prompt, example, names)
        n = int(lengths[row])
        assert n == len(ids) and int(batch.slot_start[row]) == start
        assert torch.equal(batch.tokens[row, :start], torch.tensor(ids[:start]))
        torch.testing.assert_close(logits[row, :n], ref_logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            cache["blocks.1.mlp.hook_post"][row, :n],
            ref["blocks.1.mlp.hook_post"][0],
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(
            cache["blocks.0.attn.hook_pattern"][row, :, :n, :n],
            ref["blocks.0.attn.hook_pattern"][0],
            atol=1e-5,
            rtol=0,
        )
    # the slots index the cache the way a scan reads it
    rows = torch.arange(len(examples))[:, None]
    from_cache = cache["blocks.1.mlp.hook_post"][rows, batch.slot_positions, 7]
    read = sklens.slot_activations(model, prompt, examples, [(1, 7)])[:, 0]
    torch.testing.assert_close(from_cache, read, atol=1e-5, rtol=0)


def test_no_prompt_is_the_plain_model_on_the_same_tokens(qwen):
    examples = arithmetic_examples(3, seed=9)
    logits, cache, batch = sklens.run_with_cache(
        qwen, None, examples, with_completion=False, names_filter="blocks.0.hook_resid_post"
    )
    assert batch.n_slots == 0
    plain, plain_cache = qwen.run_with_cache(
        batch.tokens, attention_mask=batch.attention_mask, names_filter="blocks.0.hook_resid_post"
    )
    assert torch.equal(logits, plain)
    assert torch.equal(cache["blocks.0.hook_resid_post"], plain_cache["blocks.0.hook_resid_post"])
