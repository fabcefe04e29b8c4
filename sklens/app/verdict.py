"""What a run found and how far to trust it, in a few sentences that each carry their numbers.

``verdict`` reads them off ``summary.json`` alone (no model, no tables): the top-K's in-sample
scores, their held-out r, the permutation null and the share of units that pass it, the
attribution, the causal check per mode, the prompt contrast, and seed and selection stability;
then, for each check that did not run, a sentence naming the flag that runs it. ``sklens run``
prints the verdict after its table and ``report.html`` opens with it. The report's sections say
the same numbers through the same sentence builders (``causal_sentence``, ``contrast_sentence``,
``attribution_sentence``, ``selection_stability_text``, ``basis_text``), so the two never
disagree.

A sentence says no more than its numbers: an interval that holds 0 leaves a unit "not told apart
from 0", and a causal bound is an upper bound on an effect, never its absence.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sklens.app import rundir

ALPHA = 0.05
# Permutation p-values are stored as float32, so 1/(B+1) = 0.05 reads back as 0.0500000007; the
# scan compared in float32 and counted such a unit as passing, and so does the verdict.
_P_SLACK = 1e-7

Summary = Mapping[str, Any]


def verdict(run: Summary | str | os.PathLike) -> list[str]:
    """The verdict of a run, one sentence per list item: what was found, each check that ran
    with its numbers, then each check that did not run with the flag that runs it.

    ``run`` is a summary (the dict ``sklens.run_study`` returns and writes to ``summary.json``)
    or a run directory, whose ``summary.json`` is read and checked as ``sklens report`` reads it.
    """
    summary = run if isinstance(run, Mapping) else rundir.read_summary(Path(run))[0]
    k = len(summary["top_neurons"])
    ran, missing = [_found(summary, k)], []
    for key, say, not_run in _CHECKS:
        if summary.get(key):
            ran += say(summary, k)
        else:
            missing.append(not_run)
    return ran + missing


def _count(n: int, k: int) -> str:
    """``n`` of ``k`` in words: "all 3", "none of the 3", "2 of the 3"."""
    if n == k:
        return f"all {k}"
    return f"none of the {k}" if n == 0 else f"{n} of the {k}"


def _found(summary: Summary, k: int) -> str:
    """The top-K's in-sample score range, the metric and how many units they were picked from."""
    scores = [row["score"] for row in summary["top_neurons"]]
    sparsity = summary["sparsity"]
    return (
        f"Found: the top {k} of {sparsity['n_units']} units (site {summary['model']['site']}) "
        f"track {summary['metric']} with in-sample scores {min(scores):.3f} to {max(scores):.3f} "
        f"(rule {sparsity['reduce']}) on the {summary['splits']['select']} selection examples "
        "that picked them, which inflates those scores (winner's curse)."
    )


def _held_out(summary: Summary, k: int) -> list[str]:
    """The top-K's mean r on the confirmation split, and how many adjusted intervals exclude 0."""
    held = summary["held_out"]
    n = held["n_adjusted_ci_excludes_0"]
    text = (
        f"Held out: on {held['n_heldout']} confirmation examples their r averages "
        f"{held['mean_r_heldout']:.3f} (in-sample {held['mean_r_select']:.3f}); {_count(n, k)} "
        f"intervals (95%, Bonferroni-adjusted over the {k}) "
        f"{'excludes' if n == 1 and k > 1 else 'exclude'} 0"
    )
    return [text + ("." if n else ", so held out no unit is told apart from r = 0.")]


def _null(summary: Summary, k: int) -> list[str]:
    """How many units pass the max-statistic null, whether the top-K does, and their share."""
    s = summary["sparsity"]
    n, units = s["n_fwer_05"], s["n_units"]
    top = sum(row["p_fwer"] <= ALPHA + _P_SLACK for row in summary["top_neurons"])
    text = (
        f"Null: {n} of {units} units ({s['frac_fwer_05']:.1%}) pass the max-statistic null at "
        f"FWER 0.05 ({s['n_permutations']} permutations, in-sample), {_count(top, k)} top units "
        "among them"
    )
    if n == 0:
        text += (
            f"; 5% of shuffled metrics reach a best score of {s['null_max_95']:.3f}, so the top "
            "scores are not told apart from chance"
        )
    elif n > k:
        sparse = "fewer than 1% pass: sparse" if s["sparse"] else "at least 1% pass: not sparse"
        text += f"; the top {k} is one pick among {n} passing units ({sparse})"
    return [text + "."]


def attribution_sentence(s: Summary, k: int) -> str:
    """The attribution summary (``summary["attribution"]``) for a top-``k``: the overlap of the
    two rankings, the top units whose effect excludes 0, and the candidates."""
    both, excluding = s["n_in_both_top"], s["n_corr_top_with_effect_excluding_0"]
    return (
        f"{both} of the top {k} by |score| {_is(both)} also in the top {k} by |effect|; "
        f"{excluding} of the top {k} by |score| {_has(excluding)} an effect whose 95% interval "
        "(per unit, unadjusted) excludes 0; candidates (past the FWER null and an effect "
        f"excluding 0): {s['n_candidates']}."
    )


def _is(n: int) -> str:
    return "is" if n == 1 else "are"


def _has(n: int) -> str:
    return "has" if n == 1 else "have"


def _attribution(summary: Summary, k: int) -> list[str]:
    """The attribution sentence, named with its examples and method."""
    s = summary["attribution"]
    return [f"Attribution on {s['examples']} ({s['method']}): {attribution_sentence(s, k)}"]


def causal_sentence(row: Summary) -> str:
    """One causal summary row (``app.statistics.causal_summary``) as a sentence that says no
    more than its numbers: the change, its rank among random sets, what the test could detect,
    the bound the data leave (an upper bound on the excess, not its absence) and whether the
    positive control was detected."""
    p = row["p_loss"]
    text = (
        f"{row['mode']} ablation: the top-K changed the loss by {row['d_loss']:+.4f} "
        f"[{row['d_loss_lo']:+.4f}, {row['d_loss_hi']:+.4f}] against a random median of "
        f"{row['random_d_loss_median']:+.4f} (rank p = {p:.3f} among {row['n_random']} random "
        "sets). At 0.05 "
        + (
            "it differs from the random sets' changes."
            if p <= ALPHA
            else "it is not told apart from the random sets' changes."
        )
    )
    if "mde_loss" in row:
        mde = row["mde_loss"]
        text += (
            " These random sets cannot make any change significant at 0.05."
            if mde == float("inf")
            else f" The test calls an excess beyond ±{mde:.4f} significant at 0.05."
        )
        share = row.get("bound_loss_share_of_prompt")
        text += f" The data exclude an excess larger than {row['bound_loss']:.4f} nats"
        known = share is not None and share == share  # NaN without a prompt
        if known:  # a share under 0.1% keeps one significant digit, not "0.0%"
            shown = f"{share:.1%}" if abs(share) >= 0.001 else f"{100 * share:.1g}%"
            text += f" ({shown} of the prompt's own effect)"
        text += ", an upper bound on the top-K's excess over random sets."
    if "positive_d_loss" in row:
        detected = row["positive_p_loss"] <= ALPHA
        text += (
            f" Positive control ({row['positive_n_neurons']} units): {row['positive_d_loss']:+.4f}"
            f", rank p = {row['positive_p_loss']:.3f}: "
            + ("detected at 0.05." if detected else "not detected at 0.05, so this check did "
               "not show that it finds a known effect at this size.")
        )  # fmt: skip
    return text


def _causal(summary: Summary, k: int) -> list[str]:
    """One causal sentence per ablation mode."""
    return [f"Causal check, {causal_sentence(row)}" for row in summary["causal"]]


def contrast_sentence(s: Summary) -> str:
    """One baseline's contrast summary (``summary["contrast"][baseline]``): the units whose
    score changes past the FWER null, the selected ones among them, and the rank agreement."""
    n = s["n_selected_fwer_0.05"]
    text = (
        f"{s['n_fwer_0.05']} of {s['n_units']} units change past the FWER null at 0.05 "
        f"({s['n_permutations']} permutations), {n} of the {s['n_selected']} selected units; "
        f"rank correlation of |score| {s['rank_correlation']:.3f}; top-{s['top_k']} overlap "
        f"(Jaccard) {s['top_k_overlap']:.3f}"
    )
    return text + ("." if n else "; no selected unit's score is told apart from the baseline's.")


def _contrast(summary: Summary, k: int) -> list[str]:
    """One contrast sentence per baseline."""
    return [
        f"Contrast with {name} (in-sample): {contrast_sentence(s)}"
        for name, s in summary["contrast"].items()
    ]


def _seeds(summary: Summary, k: int) -> list[str]:
    """How much prompts trained from other seeds agree on the top-K and on every unit's rank."""
    s = summary["stability"]
    text = (
        f"Seeds: prompts trained from other seeds pick top-{k} sets with a mean Jaccard overlap "
        f"of {s['mean_jaccard']:.2f} and rank every unit's |score| with a mean rank correlation "
        f"of {s['mean_rank_corr']:.2f}"
    )
    return [text + ("; no two seeds share a top unit." if s["mean_jaccard"] == 0 else ".")]


def selection_stability_text(s: Summary) -> tuple[str, str]:
    """The selection stability's title and sentence, from ``summary["selection_stability"]``."""
    k = s["k"]
    return (
        f"Selection stability: {s['n_boot']} bootstrap resamples of {s['examples']}",
        f"The top {k} units stay in the top {k} in {s['mean_stay_share']:.0%} of the resamples "
        f"on average; in {s['outside_share']:.0%} of them a unit outside the "
        f"{s['n_candidates']} candidates ranked could have entered the top {k}, which the stay "
        "shares assume never happens.",
    )


def basis_text(s: Summary) -> tuple[str, str]:
    """The basis test's title and sentence, from ``summary["basis_test"]``."""
    return (
        f"Basis test on {s['examples']}: each top unit against {s['n_rotations']} random bases "
        "of its layer",
        f"{s['n_p_rotation_0.05']} of {s['n_units']} top units beat the best direction of more "
        f"than 95% of the random bases (p_rotation ≤ 0.05); mean |r_unit| "
        f"{s['mean_abs_r_unit']:.3f} against a mean 95th percentile of the bases' best |r| of "
        f"{s['mean_rotation_best_q95']:.3f}. The ridge probe of the whole layer, fitted on "
        f"{s['n_probe_fit']} examples, reaches r = {s['mean_probe_r_heldout']:.3f} on average on "
        f"the other {s['n_probe_test']}.",
    )


def _selection(summary: Summary, k: int) -> list[str]:
    """The bootstrap's stay shares (the report's selection-stability sentence)."""
    return [f"Bootstrap: {selection_stability_text(summary['selection_stability'])[1]}"]


def _basis(summary: Summary, k: int) -> list[str]:
    """The basis test (the report's sentence)."""
    return [f"Basis: {basis_text(summary['basis_test'])[1]}"]


# each check: its summary key, its sentences when it ran, and the sentence when it did not
_CHECKS: tuple[tuple[str, Callable[[Summary, int], list[str]], str], ...] = (
    ("held_out", _held_out, "Not run: held-out confirmation (--n-confirm 0), so every number "
     "here is in-sample; `--n-confirm 80` re-measures the top-K on examples that did not pick "
     "them."),
    ("significance", _null, "Not run: the permutation null, so nothing here says whether the "
     "top scores exceed what shuffled metrics reach; `--permutations 199` runs it."),
    ("attribution", _attribution, "Not run: attribution, so whether the top units move the loss "
     "by their gradient is untested; `--attribute` runs it."),
    ("causal", _causal, "Not run: the causal check, so whether ablating the top units changes "
     "the loss more than ablating random units is untested; `--ablate` runs it."),
    ("contrast", _contrast, "Not run: the prompt contrast, so whether these units track the "
     "metric as well without the trained prompt is untested; `--contrast untrained,no_prompt` "
     "runs it."),
    ("stability", _seeds, "Not run: seed stability, so whether prompts trained from other seeds "
     "pick the same units is untested; `--seeds 0,1,2` runs it."),
    ("selection_stability", _selection, "Not run: the bootstrap, so whether resamples of the "
     "selection examples pick the same units is untested; `--bootstrap 200` runs it."),
    ("basis_test", _basis, "Not run: the basis test, so whether the neuron basis beats random "
     "directions of its layer is untested; `--basis-rotations 99` runs it."),
)  # fmt: skip
