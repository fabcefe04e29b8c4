"""The model's dtype: the names the command line takes, what this hardware runs fast, and the
rule ``"auto"`` follows (``resolve_dtype``).

The soft prompt stays float32 (its parameter; cast to the model's dtype where it is injected),
the loss is taken from float32 logits, and the scan's statistics accumulate in float64 whatever
the model's dtype, so a lower-precision model changes only the forward and backward passes.
``benchmarks/precision.py`` measures, on the embedded model, how far a bfloat16 study's training
losses, top-10 and correlations are from float32's and how much faster it runs; ``AUTO_CPU``
records its verdict for CPUs with bfloat16 instructions.
"""

from __future__ import annotations

import torch

from sklens import validate
from sklens.vocabulary import DTYPE_NAMES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What "auto" picks on a CPU with bfloat16 instructions (AVX512-BF16 or AMX). bfloat16 runs a
# training step and a scan in 0.42x and 0.41x float32's time there, but the main job trained in
# it does not reproduce float32's: its top-10 shares no unit and its held-out losses differ by
# up to 13% (benchmarks/results/precision*.md), so float32 stays the default; bfloat16 is a flag.
AUTO_CPU = "float32"


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX), which make a
    bfloat16 matmul faster than a float32 one; without them bfloat16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The model dtype for ``dtype`` on ``device``: a name of ``DTYPE_NAMES`` or a torch dtype.

    ``"auto"``: bfloat16 on a GPU that supports it, else float32; on a CPU, ``AUTO_CPU`` where
    it has bfloat16 instructions, else float32. float16 runs on CUDA only (a CPU computes it
    slowly and training it needs loss scaling, which sklens does on CUDA)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        name = dtype_name(dtype)
    else:
        name = validate.choice("dtype", dtype, DTYPE_NAMES)
    kind = torch.device(device).type
    if name == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return DTYPES[AUTO_CPU] if cpu_has_bf16() else torch.float32
    if name == "float16" and kind != "cuda":
        raise ValueError(
            f"{validate.assign('dtype', 'float16')} runs on CUDA only; on {kind} use "
            f"{validate.assign('dtype', 'bfloat16')} or float32"
        )
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``resolve_dtype`` takes for ``dtype`` (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return next(k for k, v in DTYPES.items() if v == dtype)
