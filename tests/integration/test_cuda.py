"""The GPU path on a GPU: the tiny model's training, scan (with its null), causal check and
attribution on CUDA equal the CPU's in float32 (to float noise), a bfloat16 run there stays close,
and a whole study runs on CUDA with the dtype ``auto`` picks. Skipped where torch sees no CUDA
device; ``benchmarks/gpu_check.sh`` runs it. ``SKLENS_TEST_DEVICE=cpu`` runs the same code
against the CPU itself (how it is checked on a machine without a GPU).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import sklens
from sklens.app.cli import main
from tests.helpers import arithmetic_examples, study_args

DEVICE = os.environ.get("SKLENS_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="needs a CUDA device (benchmarks/gpu_check.sh runs this file on one)",
)


def _study(model_dir, device, dtype="float32"):
    """Train, scan with a null, check the top-3 causally and attribute, on ``device``."""
    torch.manual_seed(0)
    model = sklens.load_model(model_dir, device=device, dtype=dtype)
    examples = arithmetic_examples(40)
    prompt = sklens.train_soft_prompt(model, examples[:16], n_slots=3, steps=3, progress=False)
    found = sklens.scan(model, prompt, examples[16:], "loss", n_permutations=19, progress=False)
    top = found.top_k(3)
    causal = sklens.causal_check(
        model, prompt, examples[16:28], top, modes=["zero"], n_random=3, progress=False
    )
    effects = sklens.attribute(model, prompt, examples[16:24], progress=False)
    return prompt, found, causal, effects


def test_float32_on_the_device_equals_the_cpu(qwen_dir):
    on_cpu, on_device = _study(qwen_dir, "cpu"), _study(qwen_dir, DEVICE)
    (p0, s0, c0, a0), (p1, s1, c1, a1) = on_cpu, on_device
    for a, b in zip(p0.history, p1.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    np.testing.assert_allclose(s1.corr.numpy(), s0.corr.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        s1.null.max_null("max").numpy(), s0.null.max_null("max").numpy(), atol=1e-4
    )
    assert s1.top_k(3)[["layer", "unit", "slot"]].equals(s0.top_k(3)[["layer", "unit", "slot"]])
    np.testing.assert_allclose(c1.d_loss.to_numpy(), c0.d_loss.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(a1.effect.cpu().numpy(), a0.effect.cpu().numpy(), atol=1e-5)


def test_bfloat16_on_the_device_stays_close_to_float32(qwen_dir):
    p32, s32, _, _ = _study(qwen_dir, DEVICE)
    p16, s16, _, _ = _study(qwen_dir, DEVICE, "bfloat16")
    for a, b in zip(p32.history, p16.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    assert np.nanmean(np.abs(s16.corr.numpy() - s32.corr.numpy())) < 0.01


def test_a_study_runs_on_the_device(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert (
        main([*study_args(qwen_dir, out), "--device", DEVICE, "--ablate", "--n-random", "3"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["device"] == DEVICE
    expected = "bfloat16" if DEVICE.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    assert summary["config"]["dtype"] == (expected or summary["config"]["dtype"])
    assert summary["causal"] and summary["top_neurons"]
