"""``sklens run --contrast untrained,no_prompt``: does the trained prompt change which units track
the metric? Each baseline's per-unit contrast with the trained prompt (``sklens.contrast``).

It runs on the selection split, the examples the scan ran on, with the scan's own metric values
(for the loss: the trained prompt's, so every baseline is correlated with the same numbers), so
its ``score_trained`` is the scan's score. ``contrast.csv`` holds every unit under every baseline
(a ``baseline`` column); with more than one baseline each also has its own
``contrast_<baseline>.csv``. Its numbers are in-sample, like the scan's.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from sklens.app.run_state import StudyRun
from sklens.atomic import write_csv
from sklens.confirm.contrast import contrast
from sklens.scanning import metrics

N_PERMUTATIONS = 999  # the paired null's swaps, whatever --permutations the scan's null has


def contrast_stage(run: StudyRun) -> dict[str, Any]:
    """Contrast the trained prompt with each of ``--contrast``'s baselines on the selection
    split; write ``contrast.csv`` (and one file per baseline when there are several); return
    each baseline's summary."""
    config, out = run.config, run.out
    baselines = config.confirm.contrast
    values = metrics.values(run.result.metric_values, name=run.metric.name)
    tables, summary = [], {}
    for baseline in baselines:
        found = contrast(
            run.model, run.prompt, run.task.val, values, baseline=baseline,
            n_permutations=N_PERMUTATIONS, seed=config.seed, batch_size=config.batch_size,
            reduce=config.select.reduce, site=run.site, progress=run.progress,
        )  # fmt: skip
        table = found.table.assign(baseline=baseline)
        table = table[["baseline", *found.table.columns]]
        if len(baselines) > 1:
            write_csv(table, out / f"contrast_{baseline}.csv")
        tables.append(table)
        summary[baseline] = {
            **found.summary(config.select.top_k, selected=run.neurons),
            "examples": f"the selection split (n={len(run.task.val)}), the scan's metric values; "
            "in-sample",
        }
    write_csv(pd.concat(tables, ignore_index=True), out / "contrast.csv")
    return summary
