"""How many units score high, measured against the permutation null (``sklens.sparsity``).

The paper calls the units above its top-10 threshold "sparse", but ten units are above the
top-10 threshold by construction. What can be checked is how many score beyond what the max over
all units and slots reaches when the metric is shuffled: the 95% quantile of the max-statistic
null (a unit above it has family-wise p ≤ 0.05) and each unit's own permutation p-value. A finding
is called sparse here when at least one unit and fewer than ``SPARSE_FRACTION`` of them pass the
max-statistic null (when none passes there is nothing to call sparse); the definition travels
with the numbers (``sparse_definition``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sklens import validate
from sklens.scanning.result import Scan
from sklens.vocabulary import REDUCE_RULES, Reduce

SPARSE_FRACTION = 0.01


def sparsity(
    scan: Scan, *, k: int = 10, thresholds: Sequence[float] = (), reduce: Reduce = "max"
) -> dict[str, Any]:
    """The share of units above the top-``k`` threshold, above each of ``thresholds`` (e.g. a
    paper's) and, with a permutation null, above the null's max statistic.

    Args:
        scan: a ``sklens.scan`` result (with ``n_permutations`` for the null's numbers).
        k: the top-K whose |score| threshold is reported.
        thresholds: further |score| thresholds; ``frac_above`` maps each to its share.
        reduce: the ranking rule whose scores are counted.

    Returns:
        ``n_units``, ``top_k_threshold``, ``median_abs_score``, ``abs_score_99``, ``frac_above``
        and, with a null, ``null_max_95``, ``n_fwer_05``, ``frac_fwer_05``, ``frac_p_unit_05``,
        ``frac_bh_05`` and ``sparse``. Every number is in-sample (the scan's own examples).
    """
    validate.integer("k", k, minimum=1, meaning="the top-K whose threshold is reported")
    validate.choice("reduce", reduce, REDUCE_RULES)
    score = scan.scores(reduce)[0].abs().flatten().numpy()
    score = score[~np.isnan(score)]
    if len(score) < k:
        raise ValueError(f"k={k} is more than the {len(score)} units with a score; lower k")
    out: dict[str, Any] = {
        "reduce": reduce,
        "n_units": len(score),
        "top_k": k,
        "top_k_threshold": float(np.sort(score)[-k]),
        "median_abs_score": float(np.median(score)),
        "abs_score_99": float(np.quantile(score, 0.99)),
        "frac_above": {float(t): float((score >= t).mean()) for t in thresholds},
        "sample": f"in-sample: the scan's {scan.n} examples",
    }
    if scan.null is None:
        return out
    p_fwer = scan.p_values(reduce, "fwer").flatten().numpy()
    n_fwer = int(np.nansum(p_fwer <= 0.05))
    return out | {
        "n_permutations": scan.null.n_permutations,
        "null_max_95": float(np.quantile(scan.null.max_null(reduce).numpy(), 0.95)),
        "n_fwer_05": n_fwer,
        "frac_fwer_05": n_fwer / len(score),
        "frac_p_unit_05": float(np.nanmean(scan.p_values(reduce, "unit").numpy() <= 0.05)),
        "frac_bh_05": float(np.nanmean(scan.q_values(reduce, "bh").numpy() <= 0.05)),
        "sparse": 0 < n_fwer and n_fwer / len(score) < SPARSE_FRACTION,
        "sparse_definition": f"at least one and fewer than {SPARSE_FRACTION:.0%} of units pass "
        "the max-statistic null at 0.05 (family-wise)",
    }
