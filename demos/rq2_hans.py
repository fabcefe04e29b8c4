"""RQ2 of arXiv 2511.21610: neurons for one fine-grained heuristic inside a uniform NLI task.

HANS-style pairs (``sklens.data.generate_hans``, McCoy et al.'s templates; ``--data`` takes the
official ``heuristics_evaluation_set.txt``); metric ``label:heuristic=lexical_overlap``; the top
unit's activation by all three heuristics although only lexical overlap selected it (the
paper's Figure 3) and the score histogram (Figure 4, top-10 threshold 0.43 in the paper). The
two labels are each pair's choices, so the causal check also reports accuracy; the
counterfactual ``hans_twin`` flips a pair's label with the least edit its template allows.

    python demos/rq2_hans.py                           # full size, embedded model
    python demos/rq2_hans.py --size tiny --out /tmp/rq2
"""

from __future__ import annotations

from dataclasses import replace

from reproduce import main
from study_spec import Grouping, Study, paper_config

CONFIG = paper_config("hans", "label:heuristic=lexical_overlap")

STUDY = Study(
    key="rq2",
    script="rq2_hans.py",
    title="RQ2: HANS, lexical-overlap heuristic",
    config=replace(CONFIG, causal=replace(CONFIG.causal, counterfactual=("hans_twin",))),
    paper_threshold=0.43,
    paper_claim="activations differ by heuristic, also for the two not used in selection; "
    "only a small subset of neurons exceeds the top-10 threshold (Fig. 3, Fig. 4)",
    groupings=(Grouping("heuristic", lambda e: e.meta["heuristic"]),),
    data_note="generated HANS-style pairs unless --data names the official file",
)

if __name__ == "__main__":
    main(STUDY)
