"""A steering curve of a finished ``sklens run``'s top neurons (``sklens.steering_curve``).

The top neurons are scaled by each factor at their slots on the first ``--n`` examples that no
split of the run used (the next ``--n`` are the scale-matching reference), beside random sets of
the same layers at the same factors. Loss only: the choices are dropped, since scoring each choice
is a forward pass (on 2 CPU cores the main job's curve with them took over 25 minutes).

    sklens run --out main-job                      # the README's main job
    python demos/steer_run.py main-job --factors 0,2,4 --n 48 --n-random 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import sklens


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--factors", default="0,2,4", help="comma-separated scale factors")
    p.add_argument("--n", type=int, default=48, help="examples of the curve (default 48)")
    p.add_argument("--n-random", type=int, default=4, help="random sets per factor")
    p.add_argument("--out", type=Path, default=None, help="write steering.csv here (a folder)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    run = sklens.open_run(args.run_dir)
    task, model, prompt, neurons = run.task, run.model, run.prompt, run.neurons
    source = task.rest or task.confirm  # a generated task has no rest: its held-out split
    plain = [
        sklens.Example(
            e.instruction, e.completion, {k: v for k, v in e.meta.items() if k != "choices"}
        )
        for e in source[: args.n]
    ]
    curve = sklens.steering_curve(
        model,
        prompt,
        plain,
        neurons,
        factors=[float(f) for f in args.factors.split(",")],
        n_random=args.n_random,
        reference=source[args.n : 2 * args.n] or None,
        progress=not args.quiet,
    )
    shown = ["factor", "set", "d_loss", "d_loss_lo", "d_loss_hi", "p_loss"]
    print(f"# steering curve: {len(plain)} examples no split used, loss only")
    print(
        curve[curve.group == "all"][shown].to_string(index=False, float_format=lambda x: f"{x:.3g}")
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        curve.to_csv(args.out / "steering.csv", index=False)
    return curve


if __name__ == "__main__":
    main()
