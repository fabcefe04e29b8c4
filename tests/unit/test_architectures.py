"""Every local-checkpoint architecture sklens lists (``sklens.models.load.ARCHITECTURES``), on a
tiny random checkpoint of each, with every backend it lists: logits against Hugging Face's own
model, the neuron-hook self-test (parallel attention included), and a scan whose r equals numpy's
on activations cached by TransformerLens's ``run_with_cache``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import sklens
from sklens.models.hook_check import HookMeaningError, check_neuron_hooks
from sklens.models.load import ARCHITECTURES, resolve_backend
from sklens.scanning import metrics
from tests.helpers import (
    HOOKED,
    arithmetic_examples,
    assert_permuted_hook_is_caught,
    backends,
    corrcoef_rows,
    needs_hooked,
    reference_slot_acts,
)

HF_NAMES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
CASES = [
    pytest.param(arch, backend, marks=[needs_hooked] if backend == "hooked" else [])
    for arch, name in HF_NAMES.items()
    for backend in ARCHITECTURES[name]
]


def test_every_listed_architecture_is_tested():
    assert set(HF_NAMES.values()) == set(ARCHITECTURES)


@pytest.mark.parametrize(("arch", "backend"), CASES)
def test_architecture_matches_hf_and_scans_like_numpy(arch, backend):
    path = sklens.tiny_checkpoint(arch, seed=2)
    model = sklens.load_model(path, backend=backend, device="cpu")  # runs the hook self-test
    assert check_neuron_hooks(model) < 1e-5
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tokens = torch.randint(
        0, model.cfg.d_vocab, (2, 13), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() < 1e-4
    examples = arithmetic_examples(12, seed=5)
    prompt = sklens.SoftPrompt.init_for(model, 2, seed=0)
    result = sklens.scan(model, prompt, examples, metrics.label("a"), batch_size=5, progress=False)
    acts = reference_slot_acts(model, prompt, examples, [0, 1])
    expected = corrcoef_rows(acts, np.array([e.meta["a"] for e in examples], dtype=float))
    err = np.abs(result.corr.numpy() - expected)
    # float32 rounding of a nearly constant unit is amplified in its r (tiny GPT-NeoX: median
    # spread 2e-4); units that vary agree to 1e-5, and every unit to 1e-3
    varies = acts.std(0) > 1e-3
    assert varies.sum() >= 20
    assert np.nanmax(err[varies]) <= 1e-5 and np.nanmax(err) <= 1e-3


@pytest.mark.parametrize(
    ("arch", "chosen"),
    [("mistral", "hooked"), ("gpt_neox", "hooked"), ("gpt2", "bridge"), ("gemma2", "bridge")],
)
def test_auto_backend_is_hooked_where_it_loads_else_bridge(arch, chosen):
    """Under TransformerLens 4, which has no HookedTransformer, auto is the bridge for all."""
    path = sklens.tiny_checkpoint(arch, seed=2)
    assert resolve_backend(path, "auto") == (chosen if HOOKED else "bridge")
    assert resolve_backend(path, "bridge") == "bridge"  # an explicit choice stays
    assert resolve_backend(sklens.DEFAULT_MODEL, "auto") == ("hooked" if HOOKED else "bridge")


@needs_hooked  # under TransformerLens 4 every hooked request gets the next test's error
def test_hooked_backend_on_a_bridge_only_architecture_names_the_fix():
    path = sklens.tiny_checkpoint("gemma", seed=2)
    with pytest.raises(ValueError, match="GemmaForCausalLM.*bridge backend.*backend='bridge'"):
        sklens.load_model(path, backend="hooked")


@pytest.mark.parametrize("backend", backends("hooked", "bridge"))
def test_self_test_catches_a_wrong_hook_on_a_parallel_attention_model(backend):
    model = sklens.load_model(sklens.tiny_checkpoint("gpt_neox", seed=2), backend=backend)
    assert model.cfg.parallel_attn_mlp  # the MLP reads ln2(resid_pre): no hook_resid_mid
    assert_permuted_hook_is_caught(model, 0)


@needs_hooked  # the attention-only model is built with HookedTransformerConfig
def test_attention_only_model_gets_a_sklens_error():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, n_ctx=16, d_head=4, d_vocab=50, attn_only=True, act_fn=None
    )
    with pytest.raises(HookMeaningError, match="attention-only: it has no MLP neurons"):
        check_neuron_hooks(HookedTransformer(cfg))


def test_without_hooked_transformer_auto_is_the_bridge(monkeypatch):
    """TransformerLens 4 removed HookedTransformer: auto takes the bridge, hooked names the fix."""
    from sklens.models import _compat

    # under TransformerLens 4 this is the real thing; under 3 it is made so
    monkeypatch.setattr(_compat, "has_hooked_transformer", lambda: False)
    assert resolve_backend(sklens.tiny_checkpoint("llama", seed=2), "auto") == "bridge"
    assert resolve_backend(sklens.DEFAULT_MODEL, "auto") == "bridge"
    with pytest.raises(ValueError, match="no HookedTransformer: pass backend='bridge'"):
        resolve_backend(sklens.DEFAULT_MODEL, "hooked")
