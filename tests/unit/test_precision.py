"""Low-precision models with float64 statistics: accurate with large activation offsets."""

from __future__ import annotations

import numpy as np
import torch

import sklens
from sklens.stats.moments import Moments
from sklens.stats.permutation import PermutationAccumulator
from sklens.stats.slot_buffer import SlotBuffer
from tests.helpers import corrcoef_rows


def test_bf16_activations_with_large_offsets_match_an_fp64_reference():
    rng = np.random.default_rng(0)
    n, d, k = 512, 64, 4
    signal = rng.normal(size=(n, 1, 1))
    offset = rng.uniform(200, 3000, size=(1, d, k))  # per-neuron offsets, as SmolLM2's sink
    acts = torch.from_numpy(offset + 40 * signal + 10 * rng.normal(size=(n, d, k))).to(
        torch.bfloat16
    )
    metric = torch.from_numpy(signal[:, 0, 0] + rng.normal(size=n))
    reference = corrcoef_rows(acts.double().numpy()[:, None], metric.numpy())  # same bf16 values
    moments = Moments.zeros(1, d, k, "cpu")
    perm = PermutationAccumulator(n, (1, d, k), 5, seed=0)
    perm.set_values(metric)
    buffer = SlotBuffer((1, d, k), 96, [perm])  # 5 full blocks, the rest held until the end
    for start in range(0, n, 32):
        idx = list(range(start, start + 32))
        batch = acts[idx].permute(0, 2, 1)  # (b, k, d) as hooks hand it over
        moments.fold_layer(0, batch, metric[idx])
        buffer.fold_layer(0, batch, idx)
        moments.fold_metric(metric[idx])
    assert buffer.n_flushed == [5] and len(buffer.rows[0]) == 32
    assert np.abs(moments.corr().numpy() - reference).max() <= 1e-4
    null = perm.reduce(buffer, moments.mean_a, moments.m2_a)
    for b in range(5):
        direct = np.nanmax(
            corrcoef_rows(acts.double().numpy()[:, None], metric.numpy()[perm.perms[b]]), -1
        )
        assert np.abs(null.scores["max"][b].numpy() - direct).max() <= 1e-4


def test_large_offsets_defeat_the_textbook_formula_but_not_the_merge():
    rng = np.random.default_rng(1)
    n, d = 1024, 32
    signal = rng.normal(size=(n, 1))
    acts = torch.from_numpy(1e4 + signal + 0.5 * rng.normal(size=(n, d))).float()  # fp32 model
    metric = torch.from_numpy(signal[:, 0] + rng.normal(size=n))
    reference = corrcoef_rows(acts.double().numpy()[:, None, :, None], metric.numpy())[0, :, 0]
    moments = Moments.zeros(1, d, 1, "cpu")
    for start in range(0, n, 64):
        idx = list(range(start, start + 64))
        moments.fold_layer(0, acts[idx][:, None, :], metric[idx])
        moments.fold_metric(metric[idx])
    assert np.abs(moments.corr()[0, :, 0].numpy() - reference).max() <= 1e-4
    # the textbook one-pass formula accumulated in float32 (a naive GPU accumulator) fails
    m32 = metric.float()
    s_a, s_aa, s_am = acts.sum(0), (acts * acts).sum(0), (acts * m32[:, None]).sum(0)
    cov = s_am / n - s_a / n * m32.mean()
    var = s_aa / n - (s_a / n) ** 2
    naive = cov / (var.clamp_min(1e-12).sqrt() * m32.std(unbiased=False))
    assert np.abs(naive.numpy() - reference).max() > 1e-2


def test_a_bf16_model_scans_within_1e4_of_its_own_activations_in_fp64(qwen_dir, examples):
    model = sklens.load_model(qwen_dir, device="cpu", dtype=torch.bfloat16)
    prompt = sklens.SoftPrompt.init_for(model, 3, seed=0)
    result = sklens.scan(model, prompt, examples, sklens.metrics.label("a"), progress=False)
    pairs = [(L, i) for L in range(2) for i in range(model.cfg.d_mlp)]
    acts = sklens.slot_activations(model, prompt, examples, pairs)  # bf16 values, exactly
    acts = acts.reshape(len(examples), 2, model.cfg.d_mlp, 3).double().numpy()
    expected = corrcoef_rows(acts, np.array([e.meta["a"] for e in examples], dtype=float))
    assert np.nanmax(np.abs(result.corr.numpy() - expected)) <= 1e-4
