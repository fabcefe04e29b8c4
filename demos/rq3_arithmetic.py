"""RQ3 of arXiv 2511.21610: skill neurons without a label, from the model's own per-example loss.

BigBench arithmetic (5-digit +, −, ×, ÷, generated in BigBench's format; ``--data`` takes
BigBench's own ``task.json`` files); metric ``loss``; the top unit's activation on
multiplications with vs without the last-digit shortcut (the paper's Figure 5) and by
operation; the score histogram (Figure 7, top-10 threshold 0.93 in the paper). Then the
questions the paper's reading rests on, as stages of the same study: does the model answer the
shortcut multiplications differently at all (``--behaviour-by last_digit_decides``, with and
without the prompt), and do the top units or the model move when held-out questions are
rewritten so that the shortcut holds (``--counterfactual last_digit_decides``). The other
shortcut the paper's reading points to, the answer as the only negative choice, cannot be
edited in: it holds for every negative answer of this data (483 of 4,000 questions; BigBench's
distractor rule). The causal follow-ups measure the loss only (seven choices per question would
cost seven passes each).

    python demos/rq3_arithmetic.py                     # full size, embedded model
    python demos/rq3_arithmetic.py --size tiny --out /tmp/rq3
    python demos/rq3_arithmetic.py --within --out demo-out/rq3-within   # the loss within operations
"""

from __future__ import annotations

from dataclasses import replace

from reproduce import main
from study_spec import Grouping, Study, paper_config

import sklens

CONFIG = paper_config("arithmetic", "loss")


def shortcut_group(example: sklens.Example) -> str | None:
    """Figure 5's groups: multiplications with and without the shortcut; others left out."""
    if example.meta["operation"] != "multiplication":
        return None
    return "shortcut" if example.meta["last_digit_decides"] else "no shortcut"


STUDY = Study(
    key="rq3",
    script="rq3_arithmetic.py",
    title="RQ3: BigBench arithmetic, per-example loss",
    config=replace(
        CONFIG,
        confirm=replace(
            CONFIG.confirm,
            behaviour_by="last_digit_decides",
            behaviour_where="operation=multiplication",
        ),
        causal=replace(CONFIG.causal, counterfactual=("last_digit_decides",), score_choices=False),
    ),  # fmt: skip
    paper_threshold=0.93,
    paper_claim="the top neuron's 10 lowest-activating questions are multiplications decided by "
    "the last digit; activations separate shortcut from no shortcut (Fig. 5, Fig. 7)",
    groupings=(
        Grouping("shortcut", shortcut_group),
        Grouping("operation", lambda e: e.meta["operation"]),
    ),
    data_note="BigBench arithmetic 5-digit +, −, ×, ÷, generated in BigBench's format "
    "(sklens.data.arithmetic) unless --data names BigBench's own files",
    within="operation",
)

if __name__ == "__main__":
    main(STUDY)
