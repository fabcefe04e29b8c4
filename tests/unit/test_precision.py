"""The model's dtype: ``resolve_dtype``'s rules, a bfloat16 study close to float32's on the tiny
model (training losses, the scan's correlations), float16 training with loss scaling, and the
dtype a run records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sklens
from sklens.app.cli import main
from sklens.models import precision
from sklens.models.precision import resolve_dtype
from tests.helpers import arithmetic_examples, study_args


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32  # bfloat16 would be emulated
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == precision.DTYPES[precision.AUTO_CPU]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == resolve_dtype(torch.bfloat16, "cpu")
    assert precision.dtype_name(torch.bfloat16) == "bfloat16"


@pytest.mark.parametrize(
    ("dtype", "message"),
    [
        ("float16", "dtype='float16' runs on CUDA only; on cpu use dtype='bfloat16' or float32"),
        ("half", "dtype must be one of auto, float32, bfloat16, float16; got 'half'"),
        (torch.float64, "dtype must be one of float32, bfloat16, float16, got torch.float64"),
    ],
)
def test_bad_dtypes_are_refused(dtype, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_dtype(dtype, "cpu")


def _train_and_scan(model_dir, dtype):
    model = sklens.load_model(model_dir, dtype=dtype)
    examples = arithmetic_examples(48)
    prompt = sklens.train_soft_prompt(model, examples[:16], n_slots=3, steps=4, progress=False)
    scan = sklens.scan(model, prompt, examples[16:], "loss", progress=False)
    return model, prompt, scan


def test_bfloat16_training_and_scan_stay_close_to_float32(qwen_dir):
    _, p32, s32 = _train_and_scan(qwen_dir, "float32")
    m16, p16, s16 = _train_and_scan(qwen_dir, "bfloat16")
    assert m16.cfg.dtype == torch.bfloat16 and p16.embedding.dtype == torch.float32
    losses = [
        (a["train_loss"], b["train_loss"]) for a, b in zip(p32.history, p16.history, strict=True)
    ]
    assert all(abs(b - a) / a < 0.02 for a, b in losses)  # training losses within 2%
    r32, r16 = s32.corr.numpy(), s16.corr.numpy()
    assert s16.corr.dtype == torch.float64  # statistics stay float64
    assert np.nanmax(np.abs(r16 - r32)) < 0.05 and np.nanmean(np.abs(r16 - r32)) < 0.01
    top = lambda s: set(map(tuple, s.top_k(10)[["layer", "unit"]].values.tolist()))  # noqa: E731
    assert len(top(s32) & top(s16)) >= 6


def test_float16_training_scales_the_loss(qwen_dir, monkeypatch):
    """On a float16 model the loss is scaled so that small gradients do not underflow; the
    steps match float32's closely (the CPU computes float16 slowly, so the API allows it only
    through a model cast by hand; sklens run takes float16 on CUDA)."""
    model = sklens.load_model(qwen_dir)
    examples = arithmetic_examples(16)
    p32 = sklens.train_soft_prompt(model, examples, n_slots=3, steps=3, progress=False)
    model.to(torch.float16)
    model.cfg.dtype = torch.float16
    scaled = []
    real_scale = torch.amp.GradScaler.scale

    def scale(self, loss):
        scaled.append(self.is_enabled() and self.get_scale() > 1)
        return real_scale(self, loss)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    p16 = sklens.train_soft_prompt(model, examples, n_slots=3, steps=3, progress=False)
    assert scaled == [True, True, True]
    assert p16.embedding.dtype == torch.float32
    for a, b in zip(p32.history, p16.history, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)


def test_a_run_records_the_dtype_it_used(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert main([*study_args(qwen_dir, out), "--dtype", "bfloat16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["dtype"] == "bfloat16" and summary["model"]["dtype"] == "bfloat16"
    assert sklens.open_run(out).model.cfg.dtype == torch.bfloat16
