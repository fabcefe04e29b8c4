"""Model-free statistics: nothing here runs a model.

* ``inference`` — multiple testing (BH/BY q-values), Fisher and bootstrap intervals, the causal
  rank p-value (re-exported here: ``sklens.stats.q_values`` ...);
* ``moments`` — streaming moments (the scan's correlations), merged exactly across batches;
* ``slot_buffer``, ``extremes``, ``ranking`` — per-slot buffers, the kept extremal examples and
  the rules that read a unit's score off its slots;
* ``permutation`` — the max-statistic permutation null, accumulated in the scan's pass;
* ``mutual_info`` — binned mutual information and its null;
* ``measures``, ``rank_tests`` — other measures of a unit against the metric (Spearman, AUROC,
  η², ...) and their tests;
* ``distributed`` — merging all of the above across data-parallel ranks.
"""

from sklens.stats.inference import bootstrap_ci, fisher_ci, q_values, rank_p

__all__ = ["bootstrap_ci", "fisher_ci", "q_values", "rank_p"]
