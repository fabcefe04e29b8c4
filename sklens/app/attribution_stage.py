"""``sklens run --attribute``: the study's attribution stage, and the table that joins what
predicts the metric (the scan's correlation ranking) with what moves the model (attribution).

Attribution runs on the causal split, disjoint from the examples that trained the prompt and
selected the units, with the completion loss as the behaviour (a label is not a model output).
``joined.csv`` has one row per unit in either top-K, with both numbers and both ranks; a unit is a
*candidate* when it is predictive (past the max-statistic null at 0.05, where the run has one)
and causal (its effect's 95% interval excludes 0).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor

from sklens.app.run_state import StudyRun
from sklens.atomic import write_csv
from sklens.causal.attribution import Attribution, attribute
from sklens.scanning.result import Scan
from sklens.units.sites import unit_slot_label

ALPHA = 0.05


def _ranks(size: Tensor) -> Tensor:
    """1 for the largest value of ``size`` ``[layer, unit]``, 2 for the next, ... (NaN last)."""
    flat = size.nan_to_num(nan=-1.0).flatten()
    ranks = torch.empty_like(flat, dtype=torch.long)
    ranks[flat.argsort(descending=True, stable=True)] = torch.arange(1, flat.numel() + 1)
    return ranks.view(size.shape)


def joined_table(scan: Scan, found: Attribution, k: int, reduce: str = "max") -> pd.DataFrame:
    """Every unit in the correlation top-``k`` or the attribution top-``k`` (of the scan's site,
    which ``found`` attributed): its r at the slot, the unit's score and rank (by |score|), its
    p_fwer where the scan has a null, its effect with interval and rank (by the largest |effect|
    over slots), and whether it is a candidate."""
    if (found.settings.site, found.layers) != (scan.settings.site, scan.layers):
        raise ValueError(
            f"the attribution's units ({found.settings.site!r} at layers {found.layers}) are not "
            f"the scan's ({scan.settings.site!r} at layers {scan.layers}): attribute the scan's "
            "site and layers"
        )
    by_corr = scan.top_k(k, reduce)[["layer", "unit", "slot"]]
    by_effect = found.top_k(k)[["layer", "unit", "slot"]]
    units = pd.concat([by_corr, by_effect]).drop_duplicates(["layer", "unit"], keep="first")
    index = {layer: i for i, layer in enumerate(scan.layers)}  # the same axis in both
    score, _ = scan.scores(reduce)
    corr_rank, effect_rank = _ranks(score.abs()), _ranks(found.effect.abs().amax(-1))
    p = scan.p_values(reduce, "fwer") if scan.null is not None else None
    lo, hi = found.interval()
    rows = []
    for layer, unit, slot in units.itertuples(index=False):
        i = index[layer]
        rows.append({
            "layer": layer, "unit": unit, "slot": slot,
            "corr": float(scan.corr[i, unit, slot]), "score": float(score[i, unit]),
            "corr_rank": int(corr_rank[i, unit]),
            "p_fwer": float(p[i, unit]) if p is not None else float("nan"),
            "effect": float(found.effect[i, unit, slot]),
            "effect_lo": float(lo[i, unit, slot]),
            "effect_hi": float(hi[i, unit, slot]),
            "effect_rank": int(effect_rank[i, unit]),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table["in_corr_top"] = table.corr_rank <= k
    table["in_effect_top"] = table.effect_rank <= k
    causal = (table.effect_lo > 0) | (table.effect_hi < 0)
    table["candidate"] = causal & (table.p_fwer <= ALPHA)
    return table.sort_values(["candidate", "corr_rank"], ascending=[False, True], ignore_index=True)


def attribution_stage(run: StudyRun) -> tuple[dict[str, Any], pd.DataFrame]:
    """Attribute the loss on the causal split; write every unit's effect
    (``attribution.safetensors``), the top-K by |effect| (``attribution.csv``) and
    ``joined.csv``; return their summary and the top-K table (the causal check's positive
    control)."""
    config, out, task = run.config, run.out, run.task
    found = attribute(run.model, run.prompt, task.causal, "loss", site=run.site,
                      batch_size=config.batch_size, progress=run.progress)  # fmt: skip
    found.save(out / "attribution.safetensors")
    top = found.top_k(config.select.top_k)
    write_csv(top, out / "attribution.csv")
    joined = joined_table(run.result, found, config.select.top_k, config.select.reduce)
    write_csv(joined, out / "joined.csv")
    top_corr = joined[joined.in_corr_top]
    causal = (top_corr.effect_lo > 0) | (top_corr.effect_hi < 0)
    summary = {
        "method": found.settings.method,
        "examples": f"the causal split (n={len(task.causal)}), metric loss",
        "n_in_both_top": int((joined.in_corr_top & joined.in_effect_top).sum()),
        "n_corr_top_with_effect_excluding_0": int(causal.sum()),
        "n_candidates": int(joined.candidate.sum()),
        "top_by_effect": [
            f"{unit_slot_label(r.site, r.layer, r.unit, r.slot)}: {r.effect:+.4f}"
            for r in found.top_k(3).itertuples()
        ],
    }
    return summary, top
