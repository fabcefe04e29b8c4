"""RQ3 of arXiv 2511.21610: skill neurons without a label, from the model's own per-example loss.

BigBench arithmetic (5-digit +, −, ×, ÷; fetched once from the ``bigbench`` sdist; ``--data``
takes a ``task.json`` or a folder of them, ``--data generated`` a small offline pool in the same
shape); metric ``loss``; the top neuron's activation on multiplications with vs without the
last-digit shortcut (the paper's Figure 5) and by operation; the score histogram (Figure 7,
top-10 threshold 0.93 in the paper). Then the questions the paper's claim rests on
(``shortcut_check``): does the model use the shortcut at all, what do the ten least activating
questions share, and which property of a question explains the top loss neurons best
(``sklens.explain`` on held-out questions). Last, the controlled test of the two shortcuts the
paper's reading points to (``sklens.counterfactual``): questions rewritten so that the last digit
decides, or so that the answer is the only negative choice, everything else equal.

    python demos/rq3_arithmetic.py                     # full size, embedded model, CPU
    python demos/rq3_arithmetic.py --size tiny --data generated --out /tmp/rq3
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import shortcut_check
from reproduce import main
from study_spec import Context, Grouping, Study

import sklens
from sklens.causal import edits
from sklens.causal.counterfactual import MIN_PAIRS

# the shortcuts the paper's manual step points to, each as an edit that makes it hold
SHORTCUT_EDITS = {
    "last_digit_decides": functools.partial(edits.last_digit_decides, decide=True),
    "answer_only_negative": functools.partial(edits.answer_only_negative, only=True),
}


def shortcut_group(example: Any) -> str | None:
    """Figure 5's groups: multiplications with and without the shortcut; others left out."""
    if example.meta["operation"] != "multiplication":
        return None
    return "shortcut" if example.meta["last_digit_decides"] else "no shortcut"


def extras(ctx: Context) -> dict[str, Any]:
    """Behaviour (on every question the prompt never trained on), the manual step (selection
    split, as the paper) and the property ranking (confirm split, held out from selection)."""
    prompt = ctx.prompts[ctx.sizes.seeds[0]]
    task, batch = ctx.task, ctx.sizes.batch_size
    unseen = task.val + task.confirm
    out: dict[str, Any] = {
        "behaviour": shortcut_check.behaviour(ctx.model, prompt, unseen, batch_size=batch),
        "behaviour_no_prompt": shortcut_check.behaviour(ctx.model, None, unseen, batch_size=batch),
    }
    least, out["manual_step"] = shortcut_check.manual_step(ctx.model, prompt, task.val, ctx.top)
    least.to_csv(ctx.out / "least_activating.csv", index=False)
    rows = shortcut_check.property_ranking(
        ctx.model, prompt, task.confirm, ctx.top, batch_size=batch
    )
    rows.to_csv(ctx.out / "properties.csv", index=False)
    out["properties"] = shortcut_check.rank_properties(rows)
    explained = sklens.explain(ctx.model, prompt, task.confirm, ctx.top, progress=False)
    explained.save(ctx.out / "explanations.csv")
    out["explanations"] = explained.summary
    out["counterfactual"] = counterfactuals(ctx, prompt)
    return out


def counterfactuals(ctx: Context, prompt: Any) -> dict[str, Any]:
    """Each shortcut edit applied to questions that did not select the neurons (at most
    ``n_causal`` pairs): the top neurons' paired change against random units of their layer and
    slot, and the model's."""
    # held out from the selection: the pool no split used first, then the confirmation split
    source = [*ctx.task.rest, *ctx.task.confirm]
    out = {}
    for name, edit in SHORTCUT_EDITS.items():
        try:
            made, note = edits.pairs(source, edit, name=name)
        except ValueError as err:  # no question could be edited
            out[name] = {"skipped": str(err)}
            continue
        made = made[: ctx.sizes.n_causal]
        if len(made) < MIN_PAIRS:
            out[name] = note | {"used": len(made), "skipped": f"fewer than {MIN_PAIRS} pairs"}
            continue
        found = sklens.counterfactual(
            ctx.model,
            prompt,
            made,
            ctx.top,
            n_random=ctx.sizes.n_random,
            batch_size=ctx.sizes.batch_size,
            progress=False,
        )
        found.units.to_csv(ctx.out / f"counterfactual_{name}.csv", index=False)
        behaviour = found.behaviour.set_index("measure")
        out[name] = note | {
            "used": len(made),
            "max_abs_d_std": float(found.units.d_std.abs().max()),
            "min_q": float(found.units.q.min()),
            "min_p_vs_random": float(found.units.p_vs_random.min()),
            "behaviour": behaviour.to_dict(orient="index"),
        }
    return out


def generated_pool(folder: Path, total: int) -> Path:
    """``--data generated``: BigBench's 2-digit subtasks as sklens generates them (3,360
    questions, shorter than the 5-digit default), written as files; ``total`` is not needed."""
    ops = ("addition", "subtraction", "multiplication", "division")
    return sklens.data.write_arithmetic(folder, [f"2_digit_{op}" for op in ops])


STUDY = Study(
    key="rq3",
    title="RQ3: BigBench arithmetic, per-example loss",
    task="arithmetic",
    metric="loss",
    group_by="operation",
    paper_threshold=0.93,
    paper_claim="the top neuron's 10 lowest-activating questions are multiplications decided by "
    "the last digit; activations separate shortcut from no shortcut (Fig. 5, Fig. 7)",
    groupings=(
        Grouping("shortcut", shortcut_group),
        Grouping("operation", lambda e: e.meta["operation"]),
    ),
    extras=extras,
    generate=generated_pool,
    data_note="BigBench arithmetic 5-digit +, −, ×, ÷, generated in BigBench's format "
    "(sklens.data.arithmetic) unless --data names BigBench's own files",
)

if __name__ == "__main__":
    main(STUDY, "rq3_arithmetic.py")
