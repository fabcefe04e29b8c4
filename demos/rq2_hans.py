"""RQ2 of arXiv 2511.21610: neurons for one fine-grained heuristic inside a uniform NLI task.

HANS-style pairs (``sklens.data.generate_hans``, McCoy et al.'s templates; ``--data`` takes the
official ``heuristics_evaluation_set.txt``); metric ``label:heuristic=lexical_overlap``; the top
neuron's activation by all three heuristics although only lexical overlap selected it (the
paper's Figure 3) and the score histogram (Figure 4, top-10 threshold 0.43 in the paper). The
two labels are given as choices, so the causal check also reports accuracy.

    python demos/rq2_hans.py                           # full size, embedded model, CPU
    python demos/rq2_hans.py --size tiny --out /tmp/rq2
"""

from __future__ import annotations

from reproduce import main
from study_spec import Grouping, Study

import sklens

LABELS = ["entailment", "non-entailment"]


def with_choices(examples: list[sklens.Example]) -> list[sklens.Example]:
    """Mark each pair as a two-way choice, so accuracy can be measured (``sklens.scanning.choices``)."""
    return [
        sklens.Example(
            e.instruction, e.completion, {**e.meta, "choices": LABELS, "answer": e.completion}
        )
        for e in examples
    ]


STUDY = Study(
    key="rq2",
    title="RQ2: HANS, lexical-overlap heuristic",
    task="hans",
    metric="label:heuristic=lexical_overlap",
    group_by="heuristic",
    paper_threshold=0.43,
    paper_claim="activations differ by heuristic, also for the two not used in selection; "
    "only a small subset of neurons exceeds the top-10 threshold (Fig. 3, Fig. 4)",
    groupings=(Grouping("heuristic", lambda e: e.meta["heuristic"]),),
    prepare=with_choices,
    data_note="generated HANS-style pairs unless --data names the official file",
)

if __name__ == "__main__":
    main(STUDY, "rq2_hans.py")
