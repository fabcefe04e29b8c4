"""TransformerLens 4's TransformerBridge against TransformerLens 3's HookedTransformer: a
training step and a scan of 32 questions on the embedded model, with each process's peak memory.

The two live in different installs, so each round runs this script once under each Python (the
order alternating), each in a fresh process; the ratio is taken round by round.

    python benchmarks/backends.py --other .tl4-env/bin/python --rounds 3 --dtype bfloat16
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import examples, metric, parser, peak_rss_kb, ratios, write_results

import sklens
from sklens.data.format import encode
from sklens.models import _compat
from sklens.models.layout import linear_layout
from sklens.prompt.training import frozen, train_logprobs


def measure(args) -> dict[str, float | str]:
    """One process's numbers: the median of 3 training steps, one scan, the peak RSS."""
    model = sklens.load_model(args.model, device=args.device, dtype=args.dtype)
    data = examples(args.batch_size)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    opt = torch.optim.AdamW(prompt.parameters(), lr=3e-3)
    encoded, writer = encode(model, data, args.n_slots), prompt.writer()
    steps = []
    with frozen(model), linear_layout(model), model.hooks(fwd_hooks=[("hook_embed", writer)]):
        for _ in range(4):  # the first warms up
            start = time.perf_counter()
            loss = train_logprobs(model, writer, encoded, list(range(len(data)))).mean_loss
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            steps.append(time.perf_counter() - start)
    start = time.perf_counter()
    sklens.scan(model, prompt, examples(32), metric(), batch_size=args.batch_size, progress=False)
    return {
        "backend": "bridge" if _compat.is_bridge(model) else "hooked",
        "step": statistics.median(steps[1:]),
        "scan": time.perf_counter() - start,
        "peak_mb": peak_rss_kb() / 1024,
    }


def compare(args) -> None:
    flags = ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    pythons = {"this install": sys.executable, "other install": args.other}
    found: dict[str, list[dict]] = {name: [] for name in pythons}
    for r in range(args.rounds):
        order = list(pythons) if r % 2 == 0 else list(reversed(pythons))
        for name in order:
            done = subprocess.run(
                [pythons[name], __file__, "--measure", *flags],
                capture_output=True, text=True, check=True, cwd=Path(__file__).parent,
            )  # fmt: skip
            found[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r}: {name} {found[name][-1]}", flush=True)
    mine, other = found["this install"], found["other install"]
    rows = [
        [f"{other[0]['backend']} / {mine[0]['backend']}: {what}",
         ratios([o[what] for o in other], [m[what] for m in mine]),
         f"{statistics.median(m[what] for m in mine):.2f} / "
         f"{statistics.median(o[what] for o in other):.2f}"]
        for what in ("step", "scan", "peak_mb")
    ]  # fmt: skip
    header = ["ratio (other install / this one)", "median (range) of rounds", "this / other"]
    write_results("backends", header, rows, args.device, args.results)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--other", help="the other install's python (e.g. .tl4-env/bin/python)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--measure", action="store_true", help="one process's numbers, as JSON")
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
    else:
        compare(args)


if __name__ == "__main__":
    main()
