"""Trains a prompt with a checkpoint after every step, for tests that kill it with SIGKILL.

Each checkpoint write is slowed down inside its temporary file (half written, then complete but
not yet renamed into place), printing ``half STEP`` and ``full STEP``, so that a test can land a
kill inside the write. ``python -m tests.train_child CHECKPOINT_DIR STEPS DELAY``.
"""

from __future__ import annotations

import io
import sys
import time

import torch

import sklens
from sklens.atomic import atomic_path
from sklens.prompt import training
from tests.helpers import arithmetic_examples


def slow_write_bytes(path, data: bytes, delay: float) -> None:
    """``write_bytes`` with the same temporary file and rename, but slow inside the write."""
    step = torch.load(io.BytesIO(data), weights_only=True)["step"]
    with atomic_path(path) as tmp:
        tmp.write_bytes(data[: len(data) // 2])
        print(f"half {step}", flush=True)
        time.sleep(delay)
        tmp.write_bytes(data)
        print(f"full {step}", flush=True)
        time.sleep(delay)


def main(checkpoint_dir: str, steps: int, delay: float) -> None:
    training.write_bytes = lambda path, data: slow_write_bytes(path, data, delay)
    model = sklens.tiny_model("qwen2", device="cpu")
    print("started", flush=True)
    sklens.train_soft_prompt(
        model,
        arithmetic_examples(16, seed=0),
        n_slots=3,
        batch_size=4,
        seed=1,
        steps=steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=1,
        progress=False,
    )
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
