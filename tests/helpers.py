"""Test data and reference computations written independently of sklens's own code paths."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jaxtyping
import numpy as np
import pytest
import torch

import sklens
from sklens.models._compat import has_hooked_transformer

# TransformerLens 4 removed HookedTransformer: the suite runs under both majors (scripts/test.sh),
# and a test of the HookedTransformer path itself is skipped there, saying why.
HOOKED = has_hooked_transformer()
needs_hooked = pytest.mark.skipif(
    not HOOKED, reason="TransformerLens 4 has no HookedTransformer (the bridge is tested instead)"
)


def backends(*names: str) -> list:
    """``names`` as pytest parameters, "hooked" skipped where TransformerLens has none."""
    return [pytest.param(n, marks=needs_hooked) if n == "hooked" else n for n in names]


@contextmanager
def without_type_checks() -> Iterator[None]:
    """Call sklens as a user does: without the suite's jaxtyping + beartype checks, which refuse a
    value outside a ``Literal`` before sklens's own check can name the accepted values."""
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)


def arithmetic_examples(n: int, seed: int = 0) -> list[sklens.Example]:
    """Generated two-operand questions with numeric and categorical meta fields."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        op = "plus" if i % 2 == 0 else "minus"
        answer = a + b if op == "plus" else a - b
        out.append(
            sklens.Example(
                instruction=f"What is {a} {op} {b}?",
                completion=str(answer),
                meta={"op": op, "big": answer > 40, "a": a},
            )
        )
    return out


def write_probe_task(path):
    """The reliability probe's task.jsonl: 80 arithmetic lines with op, digits and big."""
    import json

    lines = []
    for i in range(80):
        a, b = 10 + (i * 37) % 89, 10 + (i * 53) % 89
        op = "minus" if i % 2 else "plus"
        answer = a - b if op == "minus" else a + b
        lines.append(
            {
                "instruction": f"What is {a} {op} {b}?",
                "completion": f" {answer}",
                "op": op,
                "digits": 2,
                "big": answer > 100,
            }
        )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def probe_args(model, task, out, *extra) -> list[str]:
    """``sklens run`` with the probe's ``$Q`` flags (and splits that fit its 80 examples)."""
    return run_args(
        *extra, quiet=True, model=model, task=task, n_train=24, n_val=16, n_slots=4, out=out
    )


def forbid_work(monkeypatch, names=("load_task", "load_model", "train_soft_prompt", "scan")):
    """Make the study's steps fail the test if reached: an AssertionError is not an error the
    CLI turns into a message, so it surfaces."""
    from sklens.app import study

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    for name in names:
        monkeypatch.setattr(study, name, forbidden)


def reference_tokens(model, example, n_slots: int) -> tuple[list[int], int, int]:
    """Token ids of ``[instruction][slots][completion]`` built with HF's own tokenize=True path.

    Returns (ids, slot_start, completion_start).
    """
    tok = model.tokenizer
    if tok.chat_template is not None:
        prefix = tok.apply_chat_template(
            [{"role": "user", "content": example.instruction}],
            tokenize=True,
            add_generation_prompt=True,
        )
        if isinstance(prefix, dict) or hasattr(prefix, "keys"):
            prefix = prefix["input_ids"]
        prefix = list(prefix)
    else:
        bos = [tok.bos_token_id] if model.cfg.default_prepend_bos else []  # TransformerLens's rule
        prefix = bos + tok.encode(example.instruction, add_special_tokens=False)
    completion = tok.encode(example.completion, add_special_tokens=False)
    ids = prefix + [0] * n_slots + completion
    return ids, len(prefix), len(prefix) + n_slots


def reference_cache(model, prompt, example, names):
    """``run_with_cache`` on one unpadded example, the prompt written in by a hook made here."""
    n = prompt.n_slots
    ids, start, _ = reference_tokens(model, example, n)
    vectors = prompt.embedding.detach()

    def write(embed, hook):
        embed = embed.clone()
        embed[0, start : start + n] = vectors.to(embed.dtype)
        return embed

    with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", write)]):
        logits, cache = model.run_with_cache(
            torch.tensor([ids]), names_filter=lambda name: name in names
        )
    return ids, start, logits, cache


def reference_slot_acts(model, prompt, examples, layers) -> np.ndarray:
    """``[N, len(layers), d_mlp, n_slots]`` activations from TransformerLens's run_with_cache."""
    names = {f"blocks.{L}.mlp.hook_post" for L in layers}
    out = []
    for e in examples:
        _, start, _, cache = reference_cache(model, prompt, e, names)
        n = prompt.n_slots
        per_layer = [
            cache[f"blocks.{L}.mlp.hook_post"][0, start : start + n].T.double().numpy()
            for L in layers
        ]
        out.append(np.stack(per_layer))
    return np.stack(out)


def reference_losses(model, prompt, examples) -> np.ndarray:
    """Per-example mean completion cross-entropy from the full logits of unpadded runs."""
    out = []
    for e in examples:
        ids, start, logits, _ = reference_cache(model, prompt, e, set())
        comp_start = start + prompt.n_slots
        logp = torch.log_softmax(logits[0].double(), -1)
        targets = torch.tensor(ids[comp_start:])
        out.append(float(-logp[comp_start - 1 : len(ids) - 1].gather(1, targets[:, None]).mean()))
    return np.array(out)


def corrcoef_rows(acts: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """Pearson r of each series along axis 0 with ``metric``, via numpy.corrcoef."""
    flat = acts.reshape(acts.shape[0], -1)
    out = np.array([np.corrcoef(flat[:, j], metric)[0, 1] for j in range(flat.shape[1])])
    return out.reshape(acts.shape[1:])


def write_llama_gguf(checkpoint, path) -> None:
    """Write an HF Llama checkpoint as an F32 GGUF file the way llama.cpp's converter lays it out.

    (q/k rows permuted to llama.cpp's rotary order, a gpt2-style BPE vocabulary and merges), so
    that loading it back exercises transformers' GGUF dequantisation and un-permutation.
    """
    import json

    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(checkpoint)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    cfg = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = [None] * len(spec["model"]["vocab"])
    for text, i in spec["model"]["vocab"].items():
        tokens[i] = text
    specials = {t["content"] for t in spec["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)

    def permute(x, n_head):
        return (
            x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:])
            .swapaxes(1, 2)
            .reshape(x.shape)
        )

    sd = {k: v.numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", sd[f"{p}{theirs}.weight"])
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(q, cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(k, cfg.num_key_value_heads))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def scan_op(model, prompt, examples, positive: str, **settings) -> sklens.Scan:
    """``sklens.scan`` of the arithmetic examples against their ``op`` label (``positive`` scores
    1), without a progress bar: the scan that several statistics tests read."""
    from sklens.scanning import metrics

    label = metrics.label("op", positive=positive)
    return sklens.scan(model, prompt, examples, label, progress=False, **settings)


# the training and scan sizes of every test's ``sklens run``: three steps, a few units
_SMALL_RUN = {"steps": 3, "top_k": 3, "n_extremal": 2, "n_plateau": 4, "n_confirm": 8}


def run_args(*extra, **flags) -> list[str]:
    """``sklens run`` with ``flags`` (``n_train=24`` is ``--n-train 24``, ``quiet=True`` is
    ``--quiet``) and the small sizes, then ``extra`` (which may override either): the one spelling
    of the tests' command lines."""
    args = ["run"]
    for name, value in {**flags, **_SMALL_RUN}.items():
        flag = "--" + name.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return [*args, *extra]


def study_args(model_dir, out, *extra) -> list[str]:
    """``sklens run`` of the skillmix task, small enough for the CLI and run-directory tests."""
    return run_args(
        *extra,
        task="skillmix",
        model=model_dir,
        out=out,
        n_train=16,
        n_val=12,
        n_slots=3,
        batch_size=4,
        eval_every=2,
        quiet=True,
    )


def count_optimizer_steps(monkeypatch) -> dict[str, int]:
    """Count ``AdamW.step`` calls from now on (``["n"]``): proof that training did, or did not,
    run."""
    steps = {"n": 0}
    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        steps["n"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    return steps


def distributed_scan(model, prompt, metric: str) -> sklens.Scan:
    """The scan ``tests/dist_scan.py`` runs on every rank (37 arithmetic examples against
    ``"loss"`` or the label ``a``), which the single-process comparison runs again."""
    chosen = sklens.metrics.loss() if metric == "loss" else sklens.metrics.label("a")
    return sklens.scan(
        model,
        prompt,
        arithmetic_examples(37, seed=0),
        chosen,
        batch_size=4,
        n_permutations=7,
        permutation_seed=1,
        n_extremal=3,
        progress=False,
    )


def distributed_attribution(model, prompt, ablation: str) -> sklens.Attribution:
    """The attribution ``tests/dist_scan.py`` runs on every rank (AtP of the loss on 37
    arithmetic examples, ``"mean"`` ablation or paired with a reworded twin), which the
    single-process comparison runs again."""
    data = arithmetic_examples(37, seed=0)
    if ablation == "pairs":
        ablation, _ = sklens.edits.pairs(
            data, lambda e: sklens.Example("Now: " + e.instruction, e.completion, e.meta)
        )
    return sklens.attribute(model, prompt, data, "loss", ablation=ablation, batch_size=4,
                            progress=False)  # fmt: skip


def assert_permuted_hook_is_caught(model, layer: int) -> None:
    """``check_neuron_hooks`` names the hook of ``layer`` once a hook there permutes the
    recorded activation across neurons (a deliberately wrong hook)."""
    from sklens.models.hook_check import HookMeaningError, check_neuron_hooks

    perm = torch.randperm(model.cfg.d_mlp)
    model.blocks[layer].mlp.hook_post.add_hook(lambda act, hook: act[..., perm], dir="fwd")
    try:
        with pytest.raises(HookMeaningError, match=f"blocks.{layer}.mlp.hook_post"):
            check_neuron_hooks(model)
    finally:
        model.reset_hooks(including_permanent=True)


# the checkout (tests/ is one folder below it), and the folders the test files sit in, by what
# their markers say (tests/integration/test_folders.py checks it)
ROOT = Path(__file__).resolve().parent.parent
TEST_FOLDERS = ("unit", "integration", "slow", "network")
