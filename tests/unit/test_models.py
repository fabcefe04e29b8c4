"""Loading: HF-vs-TransformerLens logits, backends, the hook self-test, and loader errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import sklens
from sklens.models import load as models
from sklens.models.hook_check import check_neuron_hooks
from tests.helpers import (
    assert_permuted_hook_is_caught,
    backends,
    needs_hooked,
    without_type_checks,
)

LOGIT_TOL = 1e-4  # measured: 1.8e-7 (qwen2) and ~2e-7 (llama) on the tiny checkpoints


@pytest.mark.parametrize("arch_dir", ["qwen_dir", "llama_dir"])
@pytest.mark.parametrize("backend", backends("hooked", "bridge"))
def test_logits_match_hf(arch_dir, backend, request):
    path = request.getfixturevalue(arch_dir)
    model = sklens.load_model(path, backend=backend, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 17))
    with torch.no_grad():
        diff = (model(tokens) - hf(tokens).logits).abs().max()
    assert diff < LOGIT_TOL


def test_hook_post_is_down_proj_input(qwen_dir, qwen):
    hf = AutoModelForCausalLM.from_pretrained(qwen_dir, attn_implementation="eager")
    seen = {}

    def record(module, args, output):
        seen["x"] = args[0]

    handle = hf.model.layers[1].mlp.down_proj.register_forward_hook(record)
    tokens = torch.randint(0, qwen.cfg.d_vocab, (1, 9))
    with torch.no_grad():
        hf(tokens)
        _, cache = qwen.run_with_cache(tokens, names_filter="blocks.1.mlp.hook_post")
    handle.remove()
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"], seen["x"], rtol=1e-5, atol=1e-6)


def test_weights_are_frozen_after_load(qwen):
    assert not any(p.requires_grad for p in qwen.parameters())


def test_self_test_passes_and_catches_a_wrong_hook(qwen):
    assert check_neuron_hooks(qwen) < 1e-5
    assert_permuted_hook_is_caught(qwen, 1)
    assert check_neuron_hooks(qwen) < 1e-5


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'Qwen/Qwen1.5-1.8B-Chatt'.*Did you mean"):
        sklens.load_model("Qwen/Qwen1.5-1.8B-Chatt")


def test_unsupported_architecture_is_refused(qwen_dir, tmp_path):
    bad = tmp_path / "optish"
    shutil.copytree(qwen_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["OPTForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="OPTForCausalLM.*LlamaForCausalLM, Qwen2ForCausalLM"):
        sklens.load_model(bad)


def test_not_a_checkpoint_and_not_gguf(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        sklens.load_model(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        sklens.load_model(tmp_path / "weights.bin")


def test_checkpoint_path_naming_a_family_still_loads(qwen_dir, tmp_path):
    # TransformerLens picks architectures by substrings of the name; a Qwen2 checkpoint under a
    # directory called "llama-..." must still load as Qwen2
    odd = tmp_path / "llama-experiments"
    shutil.copytree(qwen_dir, odd)
    model = sklens.load_model(odd, device="cpu")
    same = sklens.load_model(qwen_dir, device="cpu")
    tokens = torch.randint(0, same.cfg.d_vocab, (1, 9))
    with torch.no_grad():  # the Qwen2 weights under the Qwen2 architecture: the same logits
        assert torch.equal(model(tokens), same(tokens))


def test_tiny_models_are_deterministic_per_seed():
    a = sklens.tiny_model("llama", seed=3, device="cpu")
    b = sklens.tiny_model("llama", seed=3, device="cpu")
    c = sklens.tiny_model("llama", seed=4, device="cpu")
    assert torch.equal(a.W_E, b.W_E) and not torch.equal(a.W_E, c.W_E)
    with without_type_checks(), pytest.raises(ValueError, match="one of qwen2, llama, .*gemma2"):
        sklens.tiny_model("opt")


def test_gguf_file_loads_offline_to_the_source_model(llama_dir, tmp_path):
    from tests.helpers import write_llama_gguf

    write_llama_gguf(llama_dir, tmp_path / "tiny.gguf")
    model = sklens.load_model(tmp_path / "tiny.gguf", device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="eager")
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 13))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < LOGIT_TOL
    # dequantised once: the cached checkpoint is reused, and no partial directory is left behind
    converted = sklens.gguf_to_checkpoint(tmp_path / "tiny.gguf")
    stamp = (converted / "config.json").stat().st_mtime_ns
    assert sklens.gguf_to_checkpoint(tmp_path / "tiny.gguf") == converted
    assert (converted / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".partial-")]


@needs_hooked  # under TransformerLens 4 an official name boots a TransformerBridge
def test_official_names_load_unprocessed_through_transformer_lens(monkeypatch, qwen):
    # no hub here: check the routing (an official name goes to from_pretrained_no_processing,
    # the unprocessed weights whose hook_post equals HF's) and that the self-test still runs
    from transformer_lens import HookedTransformer

    calls = []

    def fake(name, **kwargs):
        calls.append((name, kwargs))
        return qwen

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", fake)
    monkeypatch.setattr(models, "check_hub", lambda name: None)  # as if the hub were reachable
    model = sklens.load_model("Qwen/Qwen1.5-1.8B-Chat", device="cpu")
    assert model is qwen and calls == [
        ("Qwen/Qwen1.5-1.8B-Chat", {"device": "cpu", "dtype": torch.float32})
    ]


@pytest.mark.parametrize("backend", backends("hooked", "bridge"))
def test_both_backends_are_the_model_type(qwen_dir, backend):
    """``sklens.Model`` names what sklens uses; HookedTransformer and TransformerBridge both
    have it, and something without ``hooks``/``cfg``/``tokenizer`` does not."""
    model = sklens.load_model(qwen_dir, backend=backend)
    assert isinstance(model, sklens.Model)
    assert not isinstance(torch.nn.Linear(2, 2), sklens.Model)


@needs_hooked
def test_an_official_parallel_attention_name_passes_the_self_test(monkeypatch):
    """``load_model("EleutherAI/pythia-70m")`` with the hub download stubbed by a tiny GPT-NeoX
    (parallel attention and MLP): the review's bare ``KeyError: 'blocks.0.hook_resid_mid'`` at load
    is gone, because the self-test reads the input the MLP module receives."""
    from transformer_lens import HookedTransformer

    neox = sklens.tiny_model("gpt_neox", backend="hooked")
    assert neox.cfg.parallel_attn_mlp
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", lambda n, **kw: neox)
    monkeypatch.setattr(models, "check_hub", lambda name: None)  # as if the hub were reachable
    assert sklens.load_model("EleutherAI/pythia-70m", device="cpu") is neox
