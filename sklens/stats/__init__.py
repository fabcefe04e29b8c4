"""Is it real? Everything statistical beyond the scan's own correlations.

* ``inference`` — multiple testing (BH/BY q-values), Fisher and bootstrap intervals, the causal
  rank p-value (re-exported here: ``sklens.stats.q_values`` ...);
* ``permutation`` — the max-statistic permutation null, accumulated in the scan's pass;
* ``measures`` — other measures of a neuron against the metric (Spearman, AUROC, η², ...);
* ``held_out`` — re-measuring selected neurons on examples that did not select them;
* ``stability`` — agreement of the top-K across training seeds and baselines.
"""

from sklens.stats.inference import bootstrap_ci, fisher_ci, q_values, rank_p

__all__ = ["bootstrap_ci", "fisher_ci", "q_values", "rank_p"]
