"""Run under torchrun: a data-parallel scan (``metric``: label or loss) or attribution
(``attribution:mean``, ``attribution:pairs``), saved by rank 0 for comparison: on gloo over CPU
processes, or with ``SKLENS_TEST_DEVICE=cuda`` on NCCL, one GPU per rank (``cuda:LOCAL_RANK``)."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

import sklens
from tests.helpers import distributed_attribution, distributed_scan


def main(checkpoint: str, prompt_dir: str, metric: str, out: str) -> None:
    on_gpu = os.environ.get("SKLENS_TEST_DEVICE", "cpu").startswith("cuda")
    dist.init_process_group("nccl" if on_gpu else "gloo")
    model = sklens.load_model(checkpoint, device="cuda" if on_gpu else "cpu")
    prompt = sklens.SoftPrompt.load(prompt_dir, model)
    if metric.startswith("attribution:"):
        result = distributed_attribution(model, prompt, metric.removeprefix("attribution:"))
    else:
        result = distributed_scan(model, prompt, metric)
    if dist.get_rank() == 0:
        result.save(out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
