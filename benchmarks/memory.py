"""Peak memory of the scan vs the naive alternative as N grows; each run in a fresh process.

The naive alternative keeps every example's slot activations for every neuron (the least a
run_with_cache user must keep) and calls numpy.corrcoef; its memory grows with N. With
``--methods`` also attribution (``sklens.attribute``, AtP of the loss): ``attribution`` with mean
ablation, ``attribution-pairs`` with paired ablation (each question's twin asks it with a longer
preamble), whose twins' units are read batch by batch. Peak RSS on
CPU (and peak CUDA memory on GPU) is read by the child process itself. Loading (and on first use
converting) the model peaks above what a scan needs, so the child resets the kernel's peak-RSS
mark after loading (``/proc/self/clear_refs``, Linux) and reports the peak *during* the method
and how far it rose above the RSS before it.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time

import numpy as np
import torch
from common import examples, metric, parser, peak_rss_kb, reset_peak_rss, rss_kb, write_results

import sklens


def child(method: str, n: int, args) -> dict:
    model = sklens.load_model(args.model, device=args.device)
    data = examples(n)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    reset = reset_peak_rss()
    before = rss_kb()
    start = time.perf_counter()
    if method == "scan":
        sklens.scan(
            model,
            prompt,
            data,
            metric(),
            batch_size=args.batch_size,
            progress=False,
        )
    elif method.startswith("attribution"):
        ablation = "mean"
        if method == "attribution-pairs":
            ablation, _ = sklens.edits.pairs(data, _twin)
        sklens.attribute(
            model, prompt, data, "loss", ablation=ablation, batch_size=args.batch_size,
            progress=False,
        )  # fmt: skip
    else:
        pairs = [(L, i) for L in range(model.cfg.n_layers) for i in range(model.cfg.d_mlp)]
        acts = sklens.slot_activations(model, prompt, data, pairs, batch_size=args.batch_size)
        flat = acts.reshape(n, -1).numpy()  # fp32, N x (layers * d_mlp * slots)
        values = np.asarray([float(e.meta["operation"] == "multiplication") for e in data])
        # r of the first 2000 columns: computing all of them (scan.py times that) adds no memory
        np.corrcoef(flat[:, :2000].T.astype(np.float64), values[None])
    seconds = time.perf_counter() - start
    peak = peak_rss_kb()
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    return {
        "rss_mb": peak / 1024,
        "before_mb": before / 1024,
        "reset": reset,
        "cuda_mb": cuda,
        "s": seconds,
        "n_neurons": model.cfg.n_layers * model.cfg.d_mlp,
    }


def _twin(example: sklens.Example) -> sklens.Example:
    """The same question behind a longer preamble: a twin whose slots sit elsewhere."""
    return sklens.Example("Answer this question. " + example.instruction, example.completion,
                          example.meta)  # fmt: skip


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", default="64,256,1024,2048")
    p.add_argument("--naive-max", type=int, default=256, help="largest N for the naive method")
    p.add_argument(
        "--methods", default="scan,naive", help="of scan, naive, attribution, attribution-pairs"
    )
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse_hidden())
    args = p.parse_args()
    unknown = set(args.methods.split(",")) - {"scan", "naive", "attribution", "attribution-pairs"}
    if unknown:
        p.error(
            f"--methods: unknown {sorted(unknown)}; of scan, naive, attribution, attribution-pairs"
        )
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    rows, first, n_neurons = [], {}, 0
    for n in [int(x) for x in args.sizes.split(",")]:
        for method in args.methods.split(","):
            if method == "naive" and n > args.naive_max:
                per_example_mb = 4 * args.n_slots * n_neurons / 2**20  # fp32 slot activations
                rows.append(
                    [
                        method,
                        n,
                        f"not run (≥ {per_example_mb * n / 1024:.1f} GB of activations)",
                        *[""] * 5,
                    ]
                )
                continue
            cmd = [
                sys.executable,
                __file__,
                "--child",
                method,
                str(n),
                "--device",
                args.device,
                "--model",
                args.model,
                "--batch-size",
                str(args.batch_size),
                "--n-slots",
                str(args.n_slots),
                "--results",
                str(args.results),
            ]
            out = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            first.setdefault(method, out["rss_mb"])
            n_neurons = out["n_neurons"]
            rows.append(
                [
                    method,
                    n,
                    f"{out['rss_mb']:.0f}",
                    f"{out['rss_mb'] - out['before_mb']:.0f}"
                    + ("" if out["reset"] else " (peak includes loading)"),
                    f"{out['rss_mb'] / first[method]:.3f}",
                    "" if out["cuda_mb"] is None else f"{out['cuda_mb']:.0f}",
                    f"{out['s']:.0f}",
                    f"{n / out['s']:.2f}",
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)  # a long run shows progress
    write_results(
        "memory",
        [
            "method",
            "N",
            "peak RSS during it (MB)",
            "above RSS before it (MB)",
            "× at smallest N",
            "peak CUDA (MB)",
            "s",
            "examples/s",
        ],
        rows,
        args.device,
        args.results,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
