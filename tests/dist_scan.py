"""Run under torchrun: a data-parallel scan on gloo, saved by rank 0 for comparison."""

from __future__ import annotations

import sys

import torch.distributed as dist

import sklens
from tests.helpers import distributed_scan


def main(checkpoint: str, prompt_dir: str, metric: str, out: str) -> None:
    dist.init_process_group("gloo")
    model = sklens.load_model(checkpoint, device="cpu")
    prompt = sklens.SoftPrompt.load(prompt_dir, model)
    result = distributed_scan(model, prompt, metric)
    if dist.get_rank() == 0:
        result.save(out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
