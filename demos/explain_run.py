"""From "these neurons correlate" to a controlled test, on a finished ``sklens run``.

1. ``sklens.explain``: every candidate explanation of each top neuron (meta fields, surface
   properties, token n-grams) ranked on the run's confirmation split, held out from the selection;
2. ``sklens.counterfactual``: pairs that differ in one property, built by an edit
   (``sklens.edits``) from examples that no split of the run used, and the paired change of each
   top neuron (against random neurons of the same layer and slot) and of the model's behaviour.

    sklens run --out main-job                            # the README's main job (arithmetic)
    python demos/explain_run.py main-job                 # edit: the last digit decides
    python demos/explain_run.py main-job --edit only_negative
    python demos/explain_run.py hans-run --edit hans_twin
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import sklens
from sklens.causal import edits

EDITS = {
    "last_digit_decides": functools.partial(edits.last_digit_decides, decide=True),
    "last_digit_stops_deciding": functools.partial(edits.last_digit_decides, decide=False),
    "only_negative": functools.partial(edits.answer_only_negative, only=True),
    "not_only_negative": functools.partial(edits.answer_only_negative, only=False),
    "hans_twin": edits.hans_twin,
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--edit", choices=sorted(EDITS), default="last_digit_decides")
    p.add_argument("--pairs", type=int, default=60, help="at most this many pairs (default 60)")
    p.add_argument("--n-random", type=int, default=20, help="random units per top neuron")
    p.add_argument("--out", type=Path, default=None, help="write the tables here (a folder)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    run = sklens.open_run(args.run_dir)
    task, model, prompt, neurons = run.task, run.model, run.prompt, run.neurons
    progress = not args.quiet

    explained = sklens.explain(model, prompt, task.confirm, neurons, progress=progress)
    print(f"\n# explain: {len(task.confirm)} held-out examples (the run's confirmation split)")
    print("\n".join(explained.summary))

    source = task.rest or task.confirm  # a generated task has no rest: its held-out split
    made, note = edits.pairs(source, EDITS[args.edit], name=args.edit)
    made = made[: args.pairs]
    found = sklens.counterfactual(
        model, prompt, made, neurons, n_random=args.n_random, progress=progress
    )
    print(
        f"\n# counterfactual: {args.edit}, {len(made)} pairs ({note['paired']} of "
        f"{note['tried']} examples in no split could be edited)"
    )
    shown = ["label", "d_act", "d_act_lo", "d_act_hi", "d_std", "p", "q", "p_vs_random"]
    print(found.units[shown].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(found.behaviour.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        explained.save(args.out / "explanations.csv")
        found.units.to_csv(args.out / "counterfactual_units.csv", index=False)
        found.behaviour.to_csv(args.out / "counterfactual_behaviour.csv", index=False)
        summary = {"summary": explained.summary, "edit": note | {"used": len(made)}}
        (args.out / "explain_run.json").write_text(json.dumps(summary, indent=2))
    return {"explanations": explained, "counterfactual": found}


if __name__ == "__main__":
    main()
