"""Token layout, padding and batch invariance, and formatting errors."""

from __future__ import annotations

import pytest
import torch

import sklens
from sklens.data.format import encode, iter_batches
from sklens.prompt.forward import completion_logprobs, gather_slots
from tests.helpers import reference_tokens


def test_chat_layout_places_slots_after_the_assistant_header(qwen, examples):
    enc = encode(qwen, examples[:1], 4)[0]
    text = qwen.tokenizer.decode(list(enc.prefix))
    assert text == (
        f"<|im_start|>user\n{examples[0].instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen.tokenizer.decode(list(enc.completion)) == examples[0].completion
    ids, start, comp = reference_tokens(qwen, examples[0], 4)
    assert list(enc.prefix) == ids[:start] and list(enc.completion) == ids[comp:]


def test_plain_layout_prepends_bos(llama, examples):
    enc = encode(llama, examples[:1], 3)[0]
    assert enc.prefix[0] == llama.tokenizer.bos_token_id
    assert llama.tokenizer.decode(list(enc.prefix[1:])) == examples[0].instruction


def test_batch_rows_and_slot_positions(qwen, examples):
    encoded = encode(qwen, examples[:5], 3)
    batch = next(iter_batches(qwen, encoded, 3, 5))
    for b, enc in enumerate(encoded):
        n = len(enc.prefix) + 3 + len(enc.completion)
        assert batch.attention_mask[b].sum() == n
        assert batch.tokens[b, : len(enc.prefix)].tolist() == list(enc.prefix)
        assert batch.tokens[b, len(enc.prefix) + 3 : n].tolist() == list(enc.completion)
        assert batch.slot_positions[b].tolist() == [len(enc.prefix) + i for i in range(3)]


@pytest.mark.parametrize("model_name", ["qwen", "llama"])
def test_results_do_not_depend_on_batch_or_padding(model_name, request, examples):
    model = request.getfixturevalue(model_name)
    prompt = sklens.SoftPrompt.init_for(model, 4, seed=1)
    # make lengths differ a lot so padding really varies
    mixed = [*examples[:3], sklens.Example("x " * 30 + "What is 1 plus 1?", "2 and more", {})]
    encoded = encode(model, mixed, 4)
    writer = prompt.writer()
    acts = {}

    def keep(act, hook):
        acts["slots"] = gather_slots(act, current)

    results = {}
    with (
        torch.no_grad(),
        model.hooks(fwd_hooks=[("hook_embed", writer), ("blocks.1.mlp.hook_post", keep)]),
    ):
        for bs in (1, 4):
            lp, sl = [], []
            for current in iter_batches(model, encoded, 4, bs):
                writer.start(current)
                out = completion_logprobs(model, current)
                lp.extend(
                    out.logprobs[i, : int(out.mask[i].sum())] for i in range(len(current.indices))
                )
                sl.append(acts["slots"])
            results[bs] = (lp, torch.cat(sl))
    for a, b in zip(results[1][0], results[4][0], strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (results[1][1] - results[4][1]).abs().max() <= 1e-5


def test_formatting_errors(qwen, examples):
    with pytest.raises(ValueError, match="no examples"):
        encode(qwen, [], 4)
    with pytest.raises(ValueError, match="example 1 has an empty completion"):
        encode(qwen, [examples[0], sklens.Example("q", "", {})], 4)
    long = sklens.Example("word " * 600, "1", {})
    with pytest.raises(
        ValueError, match=r"example 0 \('word word .*'…\) is \d+ tokens .* n_ctx=512"
    ):
        encode(qwen, [long], 4)
    with pytest.raises(ValueError, match="no chat template"):
        encode(sklens.tiny_model("llama", seed=1), examples[:1], 4, chat_template=True)
    # (under pytest the runtime type checker rejects Example(3, "x") first; users get this)
    bad = object.__new__(sklens.Example)
    for name, value in (("instruction", 3), ("completion", "x"), ("meta", {})):
        object.__setattr__(bad, name, value)
    with pytest.raises(TypeError, match="must be str, got int and str"):
        bad.__post_init__()
