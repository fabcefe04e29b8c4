"""Data-parallel scans on torch.distributed (gloo on CPU, NCCL on GPU).

Run the same script on every rank (``torchrun --nproc_per_node N script.py``); after
``torch.distributed.init_process_group`` a plain ``sklens.scan(...)`` call shards the examples by
rank, scans its shard, and merges: the streaming moments are gathered and merged exactly (the
same pairwise update that merges batches), metric values are summed (each example belongs to one
rank), and permutation sums are moved to a common shift and summed. Every rank returns the same
``Scan``; the result equals a single-process scan up to floating-point summation order.

Under torchrun each rank takes its ``LOCAL_RANK``'s GPU: ``load_model(device=None)`` and a bare
``device="cuda"`` resolve to ``cuda:{LOCAL_RANK}`` (``local_device``), and the NCCL collectives
here use the same device, so ``torchrun --nproc_per_node N`` on a node with N GPUs puts one rank
on each. An explicit ``cuda:K`` is taken as written (every rank then shares GPU K).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from sklens.stats.extremes import Extremes
from sklens.stats.moments import GroupedMoments, Moments


def local_device(device: str | torch.device | None = None) -> str:
    """The device a model loads onto, and that this rank's NCCL collectives use.

    ``None`` is CUDA where torch sees a GPU, else the CPU. CUDA (``None`` with a GPU, or a bare
    ``"cuda"``) is ``cuda:{LOCAL_RANK}`` where the ``LOCAL_RANK`` environment variable is set
    (torchrun sets it), so that each rank of a node takes its own GPU instead of all sharing
    ``cuda:0``; where each process sees a single GPU (``CUDA_VISIBLE_DEVICES`` set per rank) it
    is ``cuda:0``. Any other device (``cpu``, ``cuda:K``, ``mps``) is returned as written.
    """
    if device is not None and str(device) != "cuda":
        return str(device)
    if device is None and not torch.cuda.is_available():
        return "cpu"
    rank = os.environ.get("LOCAL_RANK", "").strip()
    if not rank:
        return "cuda"
    index, count = int(rank), torch.cuda.device_count()
    if count == 0:
        return "cuda"  # torch says why it cannot use it
    if index < count:
        return f"cuda:{index}"
    if count == 1:
        return "cuda:0"
    raise ValueError(
        f"LOCAL_RANK={index} but this process sees {count} CUDA GPU(s); start at most {count} "
        f"processes per node (torchrun --nproc_per_node {count}) or pass an explicit cuda:N"
    )


def active() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def shard(n: int) -> list[int]:
    """This rank's example indices: ``rank, rank + world, ...``."""
    if not active():
        return list(range(n))
    return list(range(dist.get_rank(), n, dist.get_world_size()))


def merge_moments(local: Moments | GroupedMoments) -> Moments | GroupedMoments:
    """All ranks' moments merged in rank order (identical on every rank); group by group."""
    if not active():
        return local
    if isinstance(local, GroupedMoments):
        return GroupedMoments([merge_moments(g) for g in local.groups], local.codes)
    world = dist.get_world_size()
    device = local.mean_a.device
    scalars = torch.tensor([local.n, local.mean_m, local.m2_m], dtype=torch.float64, device=device)
    gathered = {}
    for name in ("mean_a", "m2_a", "c_am"):
        parts = [torch.empty_like(getattr(local, name)) for _ in range(world)]
        dist.all_gather(parts, getattr(local, name).contiguous())
        gathered[name] = parts
    scalar_parts = [torch.empty_like(scalars) for _ in range(world)]
    dist.all_gather(scalar_parts, scalars)
    merged = Moments(
        0,
        torch.zeros_like(local.mean_a),
        torch.zeros_like(local.m2_a),
        torch.zeros_like(local.c_am),
        0.0,
        0.0,
    )
    for r in range(world):
        n, mean_m, m2_m = scalar_parts[r].tolist()
        merged = merged.merge(
            Moments(
                int(n),
                gathered["mean_a"][r],
                gathered["m2_a"][r],
                gathered["c_am"][r],
                mean_m,
                m2_m,
            )
        )
    return merged


def sum_values(values: Tensor, mask: Tensor) -> Tensor:
    """Metric values from all ranks (each example is written by exactly one rank)."""
    if not active():
        return values
    device = local_device("cuda") if dist.get_backend() == "nccl" else "cpu"
    total = torch.where(mask, values, 0.0).to(device)
    count = mask.to(device, torch.float64)
    dist.all_reduce(total)
    dist.all_reduce(count)
    if not bool((count == 1).all()):
        raise RuntimeError("distributed scan: every example must be scanned by exactly one rank")
    return total.cpu()


def sum_over_ranks(tensors: dict[int, Tensor]) -> dict[int, Tensor]:
    """Each tensor summed over the ranks (a copy on the tensor's device; the inputs as they are
    outside a process group). NCCL reduces on this rank's GPU, gloo on the CPU."""
    if not active():
        return tensors
    device = local_device("cuda") if dist.get_backend() == "nccl" else "cpu"
    out = {}
    for key, tensor in tensors.items():
        total = tensor.to(device, copy=True)
        dist.all_reduce(total)
        out[key] = total.to(tensor.device)
    return out


def mean_over_ranks(means: dict[int, Tensor], n: int) -> dict[int, Tensor]:
    """Means over each rank's ``n`` examples merged into the means over all of them (weighted
    by ``n``); the inputs as they are outside a process group."""
    if not active():
        return means
    weighted = sum_over_ranks({k: m.double() * n for k, m in means.items()})
    total = sum_over_ranks({0: torch.tensor([float(n)], dtype=torch.float64)})[0]
    return {k: (weighted[k] / total).to(means[k].dtype) for k in means}


def sum_tensor(tensor: Tensor) -> Tensor:
    """In-place all-reduce sum (no-op outside a process group)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def merge_extremes(local: Extremes) -> Extremes:
    """Every rank's kept extremes merged: the ``n`` largest and smallest over all ranks."""
    if not active():
        return local
    world, n = dist.get_world_size(), local.n
    gathered = {}
    for name, tensor in local.tensors().items():
        tensor = tensor.to(local.values.device)
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        gathered[name] = torch.cat(parts, 1)
    merged = []
    for kind, largest in (("", True), ("low_", False)):
        values = gathered[f"extremes.{kind}values"]
        best, where = values.topk(n, dim=1, largest=largest, sorted=True)
        merged += [best, gathered[f"extremes.{kind}rows"].gather(1, where)]
    return Extremes(*merged)
