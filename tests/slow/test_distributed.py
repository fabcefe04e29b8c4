"""A data-parallel scan and attribution under torchrun (2 CPU processes, gloo; or with
``SKLENS_TEST_DEVICE=cuda`` one process per GPU on NCCL, as ``benchmarks/gpu_check.sh`` runs it)
equal the single-process ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sklens
from tests.helpers import ROOT, distributed_attribution, distributed_scan

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


ON_GPU = os.environ.get("SKLENS_TEST_DEVICE", "cpu").startswith("cuda")


def _torchrun(qwen_dir, prompt, tmp_path, what: str):
    """``tests/dist_scan.py`` under torchrun (2 CPU ranks, or one per GPU); its saved result."""
    prompt.save(tmp_path / "prompt")
    out = tmp_path / "dist.safetensors"
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(torch.cuda.device_count() if ON_GPU else 2),
        "--master_addr", "127.0.0.1", "--master_port", str(29500 + os.getpid() % 1000),
        str(ROOT / "tests" / "dist_scan.py"), str(qwen_dir), str(tmp_path / "prompt"), what,
        str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("metric", ["label", "loss"])
def test_two_process_gloo_scan_equals_single_process(qwen_dir, qwen, tmp_path, metric):
    tolerance = 1e-4 if ON_GPU else 1e-6  # another device's kernels: float32 rounding differs
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=2)
    out = _torchrun(qwen_dir, prompt, tmp_path, metric)
    parallel = sklens.Scan.load(out)
    single = distributed_scan(qwen, prompt, metric)
    assert parallel.n == single.n == 37
    assert (parallel.corr - single.corr).abs().nan_to_num().max() <= tolerance
    assert (parallel.metric_values - single.metric_values).abs().max() <= tolerance
    for rule in ("max", "absmax"):
        diff = (parallel.null.scores[rule] - single.null.scores[rule]).abs().nan_to_num()
        assert diff.max() <= 1e-5  # float32 permutation sums, different summation order
    assert torch.equal(parallel.null.perms, single.null.perms)
    # each rank kept its own examples' extremes; merged, they are the single process's
    for name, tensor in single.extremes.tensors().items():
        if "rows" in name:
            assert torch.equal(parallel.extremes.tensors()[name], tensor), name
        else:
            assert (parallel.extremes.tensors()[name] - tensor).abs().max() <= 1e-5, name


@pytest.mark.parametrize("ablation", ["mean", "pairs"])
def test_two_process_attribution_equals_single_process(qwen_dir, qwen, tmp_path, ablation):
    """Each rank attributes its share; the merged effects and standard errors (and, for mean
    ablation, the means merged over the ranks) are the single process's."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=2)
    out = _torchrun(qwen_dir, prompt, tmp_path, f"attribution:{ablation}")
    parallel = sklens.Attribution.load(out)
    single = distributed_attribution(qwen, prompt, ablation)
    assert parallel.settings.n_examples == single.settings.n_examples == 37
    scale = float(single.effect.abs().max())
    assert scale > 1e-4  # effects that are not all 0
    tolerance = (1e-3 if ON_GPU else 1e-5) * scale  # other batches: float32 rounding differs
    assert (parallel.effect - single.effect).abs().max() <= tolerance
    assert (parallel.stderr - single.stderr).abs().max() <= tolerance
