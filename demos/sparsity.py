"""How sparse are the high-score neurons, measured against the permutation null?

The paper calls the neurons above its top-10 threshold "sparse", but ten neurons are above the
top-10 threshold by construction. What can be checked is how many neurons score beyond what the
max over all neurons and slots reaches when the metric is shuffled: the 95% quantile of the
max-statistic null (a neuron above it has family-wise p ≤ 0.05) and each neuron's own
permutation p-value. We call a finding sparse when fewer than ``SPARSE_FRACTION`` of the neurons
pass the max-statistic null, and at least one does — a definition of ours, written into
results.json next to it (when none passes there is nothing to call sparse).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SPARSE_FRACTION = 0.01


def sparsity(
    scan: Any, *, k: int = 10, paper_threshold: float | None = None, reduce: str = "max"
) -> dict[str, Any]:
    """Fractions of neurons above the top-``k`` threshold, the paper's threshold and the null."""
    score = scan.scores(reduce)[0].abs().flatten().numpy()
    score = score[~np.isnan(score)]
    n = len(score)
    threshold = float(np.sort(score)[-k])
    out: dict[str, Any] = {
        "reduce": reduce,
        "n_neurons": n,
        "top_k": k,
        "top_k_threshold": threshold,
        "frac_above_top_k": float((score >= threshold).mean()),
        "median_abs_score": float(np.median(score)),
        "abs_score_99": float(np.quantile(score, 0.99)),
        "paper_threshold": paper_threshold,
        "frac_above_paper_threshold": None
        if paper_threshold is None
        else float((score >= paper_threshold).mean()),
        "sparse_definition": f"at least one and fewer than {SPARSE_FRACTION:.0%} of neurons pass "
        "the max-statistic null at 0.05 (family-wise)",
    }
    if scan.null is None:
        return out
    null = scan.null
    pooled = null.scores[reduce].abs().flatten().numpy()
    max_95 = float(np.quantile(null.max_null(reduce).numpy(), 0.95))
    p_fwer = scan.p_values(reduce, "fwer").flatten().numpy()
    p_neuron = scan.p_values(reduce, "neuron").flatten().numpy()
    q_bh = scan.q_values(reduce, "bh").flatten().numpy()
    n_fwer = int(np.nansum(p_fwer <= 0.05))
    frac_fwer = n_fwer / n
    out |= {
        "n_permutations": null.n_permutations,
        "null_max_95": max_95,
        "null_pooled_95": float(np.quantile(pooled[~np.isnan(pooled)], 0.95)),
        "frac_above_null_max_95": float((score > max_95).mean()),
        "n_fwer_05": n_fwer,
        "frac_fwer_05": frac_fwer,
        "frac_p_neuron_05": float(np.nanmean(p_neuron <= 0.05)),
        "frac_bh_05": float(np.nanmean(q_bh <= 0.05)),
        "sparse": 0 < n_fwer and frac_fwer < SPARSE_FRACTION,
    }
    return out
