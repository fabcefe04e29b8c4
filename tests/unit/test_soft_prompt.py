"""SoftPrompt: init modes, save/load, width and corruption errors, the hook placement."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import sklens
from sklens.data.format import Batch
from sklens.prompt.soft_prompt import SoftPrompt, SoftPromptConfig


def test_init_modes(qwen):
    w_e = qwen.W_E.detach()
    random_p = SoftPrompt.init_for(qwen, 5, init="random", seed=0)
    assert random_p.embedding.shape == (5, qwen.cfg.d_model)
    assert random_p.embedding.dtype == torch.float32
    torch.testing.assert_close(
        random_p.embedding.norm(dim=-1), w_e.norm(dim=-1).mean().expand(5), rtol=1e-5, atol=1e-6
    )
    vocab_p = SoftPrompt.init_for(qwen, 5, init="sample_vocab", seed=0)
    assert all(any(torch.equal(v, row) for row in w_e) for v in vocab_p.embedding)
    text_p = SoftPrompt.init_for(qwen, 5, init="text", init_text="The ball")
    ids = qwen.tokenizer("The ball", add_special_tokens=False)["input_ids"]
    expected = w_e[torch.tensor((ids * 5)[:5])]
    torch.testing.assert_close(text_p.embedding, expected)
    again = SoftPrompt.init_for(qwen, 5, init="random", seed=0)
    assert torch.equal(again.embedding, random_p.embedding)


def test_config_errors():
    with pytest.raises(ValueError, match="needs init_text"):
        SoftPromptConfig(n_slots=3, d_model=8, init="text")
    with pytest.raises(ValueError, match="only used with init='text'"):
        SoftPromptConfig(n_slots=3, d_model=8, init="random", init_text="hi")
    with pytest.raises(ValueError, match="n_slots must be at least 1"):
        SoftPromptConfig(n_slots=0, d_model=8)
    with pytest.raises(ValueError, match="init must be one of 'random', 'text', 'sample_vocab'"):
        SoftPromptConfig(n_slots=3, d_model=8, init="bogus")


def test_save_load_roundtrip(qwen, tmp_path):
    prompt = SoftPrompt.init_for(qwen, 4, seed=2)
    prompt.history = [{"step": 1, "train_loss": 2.5}]
    prompt.save(tmp_path / "p")
    loaded = SoftPrompt.load(tmp_path / "p", qwen)
    assert torch.equal(loaded.embedding, prompt.embedding)
    assert loaded.config == prompt.config and loaded.history == prompt.history
    saved = json.loads((tmp_path / "p" / "soft_prompt.json").read_text())
    assert saved["config"]["sklens_version"] == sklens.__version__
    assert saved["config"]["model_name"] == qwen.cfg.model_name


def test_load_into_another_width_fails(qwen, tmp_path):
    config = SoftPromptConfig(n_slots=4, d_model=32, model_name="other")
    SoftPrompt(config).save(tmp_path / "p")
    with pytest.raises(ValueError, match="d_model=32 .* the model has d_model=64"):
        SoftPrompt.load(tmp_path / "p", qwen)


def test_corrupted_or_missing_files(qwen, tmp_path):
    SoftPrompt.init_for(qwen, 4).save(tmp_path / "p")
    (tmp_path / "p" / "soft_prompt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupted soft prompt"):
        SoftPrompt.load(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="saved SoftPrompt"):
        SoftPrompt.load(tmp_path / "nothing")


def test_non_finite_or_edited_prompt_files_are_refused(qwen, tmp_path):
    prompt = SoftPrompt.init_for(qwen, 4)
    prompt.save(tmp_path / "p")
    weights, config = (
        tmp_path / "p" / "soft_prompt.safetensors",
        tmp_path / "p" / "soft_prompt.json",
    )
    original = config.read_text()
    save_file({"embedding": torch.full((4, qwen.cfg.d_model), float("nan"))}, str(weights))
    with pytest.raises(ValueError, match="soft_prompt.safetensors holds NaN or infinite values"):
        SoftPrompt.load(tmp_path / "p")
    prompt.save(tmp_path / "p")
    for edit in ({"d_model": 32}, {"n_slots": 0}):
        saved = json.loads(original)
        saved["config"].update(edit)
        config.write_text(json.dumps(saved))
        with pytest.raises(ValueError, match="corrupted soft prompt: soft_prompt.json"):
            SoftPrompt.load(tmp_path / "p")
    config.write_text(json.dumps({**json.loads(original), "history": 5}))
    with pytest.raises(ValueError, match="corrupted soft prompt"):
        SoftPrompt.load(tmp_path / "p")


def test_non_finite_prompt_in_memory_is_refused_before_a_pass(qwen, examples):
    """Reliability case #20: a prompt built or edited in memory with NaN (never saved, so
    ``load`` cannot catch it) used to scan without error and return an empty top-K."""
    prompt = SoftPrompt.init_for(qwen, 4)
    with torch.no_grad():
        prompt.embedding[2, 7] = float("inf")
    for call in (
        lambda: sklens.scan(qwen, prompt, examples, sklens.metrics.loss(), progress=False),
        lambda: sklens.slot_activations(qwen, prompt, examples, [(0, 0)]),
    ):
        with pytest.raises(ValueError, match="soft prompt holds NaN or infinite values"):
            call()


def test_prompt_hook_point_can_patch_the_prompt(qwen, examples):
    prompt = SoftPrompt.init_for(qwen, 3, seed=0)
    assert "hook_prompt" in prompt.hook_dict
    with prompt.hooks(fwd_hooks=[("hook_prompt", lambda p, hook: p * 0)]):
        assert torch.count_nonzero(prompt()) == 0
    assert torch.count_nonzero(prompt()) > 0


def test_attached_writes_slots_and_is_removed_even_on_error(qwen):
    prompt = SoftPrompt.init_for(qwen, 3, seed=0)
    tokens = torch.randint(0, qwen.cfg.d_vocab, (2, 10))
    start = torch.tensor([2, 5])
    batch = Batch(tokens, torch.ones_like(tokens), start, torch.tensor([0, 0]), 3, [0, 1])
    with torch.no_grad(), prompt.attached(qwen) as writer:
        writer.start(batch)
        _, cache = qwen.run_with_cache(tokens, names_filter="hook_embed")
    embed = cache["hook_embed"]
    for b, s in enumerate(start.tolist()):
        torch.testing.assert_close(embed[b, s : s + 3], prompt.embedding.detach())
        torch.testing.assert_close(embed[b, :s], qwen.W_E[tokens[b, :s]])
    with pytest.raises(RuntimeError, match="boom"), prompt.attached(qwen):
        raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in qwen.hook_dict.values())
