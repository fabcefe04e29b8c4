"""``sklens explain RUN_DIR``: a run's ranked explanations of its top neurons, as text.

The study ranks them on its confirmation split (held out from the selection) and writes
``explanations.csv``; this reads it back with no model, like the report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sklens.app import rundir
from sklens.app.report import read_summary
from sklens.explain import summary_lines, unit_label


def format_explanations(run_dir: str | Path, top: int = 3) -> str:
    """One summary line per top neuron, then each neuron's ``top`` best-ranked hypotheses."""
    run = Path(run_dir)
    summary, config = read_summary(run)
    rundir.check_consistent(run)
    path = run / "explanations.csv"
    if not path.exists():
        why = (
            "it was run with --n-confirm 0, and explanations need held-out examples"
            if config.n_confirm == 0
            else "it was written by an older sklens"
        )
        raise rundir.RunDirError(
            f"{run} has no explanations.csv: {why}; run `sklens run --out {run}` again with "
            "--n-confirm above 0"
        )
    table = pd.read_csv(path)
    neurons = pd.read_csv(run / "neurons.csv")
    n_confirm = summary.get("splits", {}).get("confirm")
    lines = [
        f"Explanations of the top {len(neurons)} neurons, ranked on the confirm split "
        f"({n_confirm} held-out examples); q: Benjamini–Hochberg over every neuron and "
        "hypothesis.",
        "",
        *summary_lines(table, neurons),
        "",
    ]
    shown = ["rank", "hypothesis", "kind", "measure", "effect", "lo", "hi", "q", "passes"]
    for row in neurons.itertuples():
        label = unit_label(row.layer, row.neuron, row.slot)
        rows = table[table.unit == label].head(top)[shown]
        lines += [label, rows.to_string(index=False, float_format=lambda x: f"{x:.3g}"), ""]
    skipped = (summary.get("explanations") or {}).get("skipped") or {}
    if skipped:
        lines.append("Not tested: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()))
    return "\n".join(lines).rstrip()
