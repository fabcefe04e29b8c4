"""Run under torchrun (gloo, CPU): each rank reports the devices sklens resolves for it.

CUDA is faked (two GPUs seen) before sklens is imported, so this runs without a GPU; rank 0
writes every rank's report to the JSON file named on the command line.
"""

from __future__ import annotations

import json
import sys
import tempfile

import torch
import torch.distributed as dist


def main(out: str) -> None:
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2
    dist.init_process_group("gloo")
    from sklens.models import load
    from sklens.stats.distributed import local_device

    loaded = []

    def fake_load(path, backend, device, dtype):  # where load_model would put the weights
        loaded.append(device)
        return torch.nn.Linear(1, 1)

    load._load_checkpoint = fake_load
    load.resolve_backend = lambda name, backend: "hooked"  # without importing TransformerLens
    with tempfile.TemporaryDirectory() as checkpoint:
        load.load_model(checkpoint, check_hooks=False)
    report = {
        "rank": dist.get_rank(),
        "none": local_device(None),
        "cuda": local_device("cuda"),
        "load_model": loaded[0],
    }
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(reports, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
