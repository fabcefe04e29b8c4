"""The GPU path, tested without a GPU (review "ecosystem", section 6).

* Under torchrun each rank takes its ``LOCAL_RANK``'s GPU, not ``cuda:0``.
* ``sklens run`` on a GPU does not hold the freed host copy of the weights in the process.
* The scan's moments take a batch from another device than their own (a model split across GPUs).
* ``--device mps`` is refused at once: MPS has no float64.

What still needs a GPU: NCCL itself, a real ``n_devices > 1`` / ``device_map`` scan, and the host
memory of a real checkpoint moved to CUDA.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sklens.app.cli import main
from sklens.models import load
from sklens.stats import distributed
from sklens.stats.moments import GroupedMoments, Moments
from tests.helpers import ROOT, probe_args, write_probe_task


@pytest.fixture
def two_gpus(monkeypatch):
    """torch sees two CUDA GPUs (nothing is ever put on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.version, "cuda", torch.version.cuda or "12.8")


# 1. torchrun: one GPU per rank


def test_local_rank_picks_its_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device(None) == "cuda:1"
    assert distributed.local_device("cuda") == "cuda:1"
    assert load.default_device() == "cuda:1"
    assert distributed.local_device("cuda:0") == "cuda:0"  # an explicit GPU is kept
    assert distributed.local_device("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert distributed.local_device(None) == distributed.local_device("cuda") == "cuda"


def test_without_a_gpu_the_default_stays_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device(None) == load.default_device() == "cpu"


def test_one_visible_gpu_per_process_and_too_few_gpus(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match="LOCAL_RANK=3 but this process sees 2 CUDA GPU"):
        distributed.local_device(None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES per rank
    assert distributed.local_device(None) == "cuda:0"


def test_load_model_puts_the_model_on_its_ranks_gpu(two_gpus, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_RANK", "1")
    seen = []

    def fake_load(path, backend, device, dtype):
        seen.append(device)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(load, "_load_checkpoint", fake_load)
    monkeypatch.setattr(load, "resolve_backend", lambda name, backend: "hooked")
    load.load_model(tmp_path, check_hooks=False)
    load.load_model(tmp_path, device="cuda", check_hooks=False)
    assert seen == ["cuda:1", "cuda:1"]


class _Recorded(torch.Tensor):
    """A tensor whose ``.to`` records the device it was sent to and stays where it is."""

    devices: list = []

    def to(self, *args, **kwargs):
        device = kwargs.pop("device", None)
        if args and isinstance(args[0], (str, torch.device)):
            device, args = args[0], args[1:]
        if device is not None:
            _Recorded.devices.append(str(device))
        kwargs.pop("non_blocking", None)
        return super().to(*args, **kwargs) if args or kwargs else self


def test_nccl_sums_on_this_ranks_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor: None)
    _Recorded.devices = []
    values = torch.arange(4, dtype=torch.float64).as_subclass(_Recorded)
    mask = torch.ones(4, dtype=torch.bool).as_subclass(_Recorded)
    total = distributed.sum_values(values, mask)
    assert _Recorded.devices == ["cuda:1", "cuda:1"]  # was the bare "cuda", i.e. cuda:0
    assert torch.equal(total.as_subclass(torch.Tensor), torch.arange(4, dtype=torch.float64))


@pytest.mark.multiprocess
def test_two_torchrun_ranks_take_two_gpus(tmp_path):
    out = tmp_path / "ranks.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "gpu_ranks.py"),
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {r["rank"]: r for r in json.loads(out.read_text())}
    for rank in (0, 1):
        expected = f"cuda:{rank}"
        assert reports[rank] == {
            "rank": rank,
            "none": expected,
            "cuda": expected,
            "load_model": expected,
        }


# 2. sklens run does not keep the host copy of the weights on a GPU

_RSS_PROBE = """
import sys, torch
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
torch.cuda.is_available = lambda: True  # the model's device resolves to CUDA
from sklens.app import cli
start = rss_mb()
if sys.argv[1] == "fixed":
    held = cli._model_on_cpu(None)  # what sklens run does now
    if held:
        cli.hold_freed_memory()
else:
    held = cli.hold_freed_memory()  # what sklens run did: hold, whatever the device
weights = [torch.ones(75 * 2**20) for _ in range(6)]  # 6 x 300 MB, every page touched
on_gpu = [w.to("meta") for w in weights]  # the copies the move made elsewhere
del weights  # the host copies are freed, as after model.to("cuda")
print(held, start, rss_mb())
"""


def _rss_after_move(mode: str) -> tuple[str, float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    held, start, end = done.stdout.split()
    return held, float(start), float(end)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_host_copy_of_moved_weights_is_returned():
    held, start, end = _rss_after_move("fixed")
    assert held == "False"
    assert end - start < 300  # the 1.8 GB freed by the move went back to the kernel
    held, start, end = _rss_after_move("old")
    assert held == "True"
    assert end - start > 1500  # what holding freed memory did on a GPU: all of it kept


class _Stop(Exception):
    """Raised where the study would start: not an error the CLI turns into a message."""


@pytest.fixture
def stop_at_the_study(monkeypatch):
    import sklens.app.cli as cli
    from sklens.app import study

    held = []
    monkeypatch.setattr(cli, "hold_freed_memory", lambda: held.append(True))

    def run_study(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(study, "run_study", run_study)
    return held


@pytest.mark.parametrize(
    ("flags", "held"),
    [
        ([], []),
        (["--device", "cuda"], []),
        (["--device", "cuda:1"], []),
        (["--device", "cpu"], [True]),
    ],
)
def test_run_holds_freed_memory_only_for_a_cpu_model(
    flags, held, two_gpus, stop_at_the_study, tmp_path
):
    task = write_probe_task(tmp_path / "task.jsonl")
    with pytest.raises(_Stop):
        main(probe_args("unused", task, tmp_path / "out", *flags))
    assert stop_at_the_study == held


def test_run_holds_freed_memory_without_a_gpu(monkeypatch, stop_at_the_study, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task = write_probe_task(tmp_path / "task.jsonl")
    with pytest.raises(_Stop):
        main(probe_args("unused", task, tmp_path / "out"))
    assert stop_at_the_study == [True]


# 3. moments fold a batch from another device


def test_fold_moves_the_batch_to_the_states_device():
    state = Moments.zeros(2, 3, 4, "cpu")
    acts = torch.randn(5, 4, 3).as_subclass(_Recorded)
    m = torch.randn(5).as_subclass(_Recorded)
    _Recorded.devices = []
    state.fold_layer(1, acts, m)
    assert _Recorded.devices[:2] == ["cpu", "cpu"]  # the activations, then the metric
    grouped = GroupedMoments.zeros(torch.tensor([0, 1, 0, 1, 0]), 2, 3, 4, "cpu")
    _Recorded.devices = []
    grouped.fold_layer(0, acts, m, [0, 1, 2, 3, 4])
    assert _Recorded.devices.count("cpu") >= 4  # each group's share, moved


def test_float32_batches_fold_to_numpys_moments():
    gen = torch.Generator().manual_seed(3)
    n_layers, d_mlp, k = 2, 5, 3
    batches = [
        (
            10 + torch.randn(b, k, d_mlp, generator=gen),  # an offset, float32
            torch.randn(b, generator=gen, dtype=torch.float64),
        )
        for b in (7, 4, 9)
    ]
    state = Moments.zeros(n_layers, d_mlp, k, torch.device("cpu"))
    for acts, m in batches:
        for j in range(n_layers):
            state.fold_layer(j, acts * (j + 1), m.float())
        state.fold_metric(m.float())
    a = np.concatenate([acts.double().numpy() for acts, _ in batches])  # (n, k, d)
    m = np.concatenate([m.float().double().numpy() for _, m in batches])
    assert state.n == len(m)
    for j in range(n_layers):
        aj = (a * (j + 1)).transpose(0, 2, 1)  # (n, d, k), the state's layout
        centred = aj - aj.mean(0)
        # float32 batch statistics, merged in float64: float32's rounding, nothing more
        np.testing.assert_allclose(state.mean_a[j].numpy(), aj.mean(0), rtol=3e-7)
        np.testing.assert_allclose(state.m2_a[j].numpy(), (centred**2).sum(0), rtol=1e-5)
        c_am = np.einsum("n,ndk->dk", m - m.mean(), centred)
        np.testing.assert_allclose(state.c_am[j].numpy(), c_am, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(state.m2_m, ((m - m.mean()) ** 2).sum(), rtol=1e-6)
    assert state.mean_a.dtype == torch.float64


# 4. --device mps is refused before anything loads


def test_mps_is_refused_at_once(tmp_path, capsys, monkeypatch):
    from tests.helpers import forbid_work

    forbid_work(monkeypatch)
    task = write_probe_task(tmp_path / "task.jsonl")
    start = time.perf_counter()
    assert main(probe_args("unused", task, tmp_path / "out", "--device", "mps")) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err
    assert err == (
        "sklens: error: --device mps: MPS has no float64, which the scan's statistics need; "
        "use --device cpu\n"
    )
