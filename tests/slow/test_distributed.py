"""A data-parallel scan under torchrun (2 CPU processes, gloo; or with ``SKLENS_TEST_DEVICE=cuda``
one process per GPU on NCCL, as ``benchmarks/gpu_check.sh`` runs it) equals the single-process
scan."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import sklens
from tests.helpers import ROOT, distributed_scan

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.mark.parametrize("metric", ["label", "loss"])
def test_two_process_gloo_scan_equals_single_process(qwen_dir, qwen, tmp_path, metric):
    on_gpu = os.environ.get("SKLENS_TEST_DEVICE", "cpu").startswith("cuda")
    tolerance = 1e-4 if on_gpu else 1e-6  # another device's kernels: float32 rounding differs
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=2)
    prompt.save(tmp_path / "prompt")
    out = tmp_path / "dist.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(torch.cuda.device_count() if on_gpu else 2),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(ROOT / "tests" / "dist_scan.py"),
        str(qwen_dir),
        str(tmp_path / "prompt"),
        metric,
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
