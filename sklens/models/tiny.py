"""Tiny random models with a real tokenizer, built offline, for tests and examples.

``tiny_model("qwen2")`` and ``tiny_model("llama")`` write a small HF checkpoint (random weights from
``seed``, a byte-level BPE tokenizer trained on a built-in corpus) into the sklens cache once, then
load it through ``load_model`` like any local checkpoint, so they exercise the real loading path.
The Qwen2 tokenizer carries a ChatML chat template (as Qwen1.5-Chat); the Llama one has none and
a BOS token, which exercises the plain layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from sklens.atomic import partial_dir
from sklens.models.artifacts import home
from sklens.models.load import load_model
from sklens.vocabulary import Backend

Arch = Literal["qwen2", "llama", "mistral", "gpt_neox", "gptj", "gpt2", "gemma", "gemma2"]
ARCHS: tuple[str, ...] = get_args(Arch)
_VERSION = "v1"  # bump when the recipe changes, so cached checkpoints are rebuilt

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = """\
Question: What is 12 plus 7? Choices: 19, 21, 5 Answer: 19
Question: What is 305 minus 48? Answer: 257. What is 6 times 9? 54. Divide 81 by 3: 27.
The ball is to the right of the box, and the box is on the table, so the ball is above the floor.
The cat sat under the chair next to the window, behind the door, left of the lamp.
Time is a thief that steals our days; her voice was music, his heart a stone.
The doctor saw the lawyer. The lawyer was seen by the doctor. If the judge slept, the actor ran.
Premise: The banker near the artist danced. Hypothesis: The artist danced. entailment non-entailment
Answer the question in one word. Yes, no, maybe, true, false, 0 1 2 3 4 5 6 7 8 9 10 100 1000.
"""


def _tokenizer(arch: Arch) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        if arch == "qwen2"
        else ["<unk>", "<s>", "</s>"]
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    if arch == "qwen2":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
        fast.chat_template = CHATML_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="</s>",
        )
    return fast


def _hf_config(arch: Arch, vocab_size: int, n_layers: int) -> Any:
    """A small config of each architecture: d_model 64, d_mlp 128 (GPT-J: its fixed 4·d_model),
    4 heads (2 key/value heads where the architecture groups them)."""
    import transformers as tf

    grouped = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    gpt = dict(vocab_size=vocab_size, n_embd=64, n_layer=n_layers, n_head=4, n_positions=512)
    if arch == "qwen2":
        return tf.Qwen2Config(**grouped)
    if arch == "llama":
        return tf.LlamaConfig(**grouped)
    if arch == "mistral":
        return tf.MistralConfig(**grouped)
    if arch in ("gemma", "gemma2"):  # tied embeddings, as every Gemma
        config = tf.GemmaConfig if arch == "gemma" else tf.Gemma2Config
        return config(**{**grouped, "tie_word_embeddings": True}, head_dim=16)
    if arch == "gpt_neox":  # parallel attention and MLP, partial rotary
        neox = {k: v for k, v in grouped.items() if k != "num_key_value_heads"}
        return tf.GPTNeoXConfig(**neox, rotary_pct=0.25, use_parallel_residual=True)
    if arch == "gptj":  # parallel attention and MLP from one shared LayerNorm
        return tf.GPTJConfig(**gpt, rotary_dim=8, bos_token_id=1, eos_token_id=2)
    return tf.GPT2Config(**gpt, n_inner=128, bos_token_id=1, eos_token_id=2)


def _hf_model(arch: Arch, vocab_size: int, seed: int, n_layers: int) -> Any:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(arch, vocab_size, n_layers))
    with torch.no_grad():
        if arch == "qwen2":  # Qwen2 has q/k/v biases; random ones test that they are converted
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.1)
        for name, param in model.named_parameters():  # non-trivial norms: a missing one shows
            if "norm" in name or ".ln" in name:
                param.uniform_(0.5, 1.5)
    return model


def tiny_checkpoint(arch: Arch = "qwen2", seed: int = 0, n_layers: int = 2) -> Path:
    """The cached directory of a tiny HF checkpoint (built on first use)."""
    if arch not in ARCHS:
        raise ValueError(f"tiny_model arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    root = home() / "tiny"
    target = root / f"{arch}-seed{seed}-layers{n_layers}-{_VERSION}"
    if (target / "config.json").exists():
        return target
    with partial_dir(root) as tmp:
        tokenizer = _tokenizer(arch)
        _hf_model(arch, len(tokenizer), seed, n_layers).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


def tiny_model(
    arch: Arch = "qwen2",
    seed: int = 0,
    *,
    backend: Backend = "auto",
    n_layers: int = 2,
    device: str | None = None,
) -> Any:
    """A tiny random model of architecture ``arch`` (d_model 64, d_mlp 128) with a tokenizer.

    Args:
        arch: one of qwen2, llama, mistral, gpt_neox, gptj, gpt2, gemma, gemma2.
        seed: the seed of the random weights.
        backend: ``"auto"``, ``"hooked"`` or ``"bridge"``, as ``load_model``.
        n_layers: the number of layers.
        device: where the model runs (default: as ``load_model``).

    Returns:
        The model, built once into the cache as a local checkpoint and loaded from there."""
    return load_model(tiny_checkpoint(arch, seed, n_layers), backend=backend, device=device)
