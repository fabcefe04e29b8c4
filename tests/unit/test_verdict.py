"""The verdict (``sklens.verdict``): each sentence carries its numbers, changes its words when a
number crosses its threshold, never says more than the numbers, and names the flag of each check
that did not run. Planted summaries start from the reference run's ``summary.json``."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict

import pytest

import sklens
from sklens.app.verdict import causal_sentence, verdict
from tests.helpers import ROOT

REFERENCE = json.loads((ROOT / "tests" / "reference" / "tiny_run" / "summary.json").read_text())


def _planted(**changes) -> dict:
    """The reference summary with ``changes`` (``key=None`` drops a stage)."""
    summary = copy.deepcopy(REFERENCE)
    for key, value in changes.items():
        if value is None:
            summary.pop(key, None)
        else:
            summary[key] = value
    return summary


def _line(lines: list[str], start: str) -> str:
    (found,) = [line for line in lines if line.startswith(start)]
    return found


def test_the_reference_run_reads_as_found_then_each_check_then_what_did_not_run():
    lines = verdict(REFERENCE)
    assert lines[0].startswith("Found: the top 3 of 256 units (site mlp) track label:skill=spatial")
    assert "in-sample scores 0.892 to 0.907 (rule max)" in lines[0]
    assert "winner's curse" in lines[0]
    starts = [line.split(":")[0] for line in lines]
    assert starts[:5] == ["Found", "Held out", "Null", "Attribution on the causal split (n=8), "
                          "metric loss (atp)", "Causal check, mean ablation"]  # fmt: skip
    not_run = [line for line in lines if line.startswith("Not run")]
    assert lines[-len(not_run) :] == not_run  # what did not run comes last
    assert {re.search(r"`(--[a-z-]+)", line)[1] for line in not_run} == {
        "--contrast", "--bootstrap", "--basis-rotations"
    }  # fmt: skip


def test_the_directory_reader_gives_the_same_verdict(tmp_path):
    summary = _planted(config=asdict(sklens.StudyConfig()))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert sklens.verdict(tmp_path) == verdict(summary)
    with pytest.raises(FileNotFoundError, match="has no summary.json"):
        sklens.verdict(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (3, "all 3 intervals (95%, Bonferroni-adjusted over the 3) exclude 0"),
        (1, "1 of the 3 intervals (95%, Bonferroni-adjusted over the 3) excludes 0"),
        (0, "none of the 3 intervals (95%, Bonferroni-adjusted over the 3) exclude 0"),
    ],
)
def test_held_out_counts_the_adjusted_intervals_that_exclude_0(n, words):
    held = {**REFERENCE["held_out"], "n_adjusted_ci_excludes_0": n}
    line = _line(verdict(_planted(held_out=held)), "Held out")
    assert "on 8 confirmation examples their r averages 0.685 (in-sample 0.901)" in line
    assert words in line
    assert ("no unit is told apart from r = 0" in line) == (n == 0)


def test_without_a_confirmation_every_number_is_in_sample():
    line = _line(verdict(_planted(held_out=None)), "Not run: held-out")
    assert "every number here is in-sample" in line and "`--n-confirm 80`" in line


def test_the_null_says_whether_the_top_k_is_one_pick_among_many_passing_units():
    sparsity = REFERENCE["sparsity"]
    line = _line(verdict(REFERENCE), "Null")
    # the top units' p_fwer is float32 0.05 (1/20): they pass, as the scan counted them
    assert "8 of 256 units (3.1%) pass the max-statistic null at FWER 0.05" in line
    assert "(19 permutations, in-sample), all 3 top units among them" in line
    assert "one pick among 8 passing units (at least 1% pass: not sparse)" in line

    few = {**sparsity, "n_fwer_05": 3, "frac_fwer_05": 3 / 256, "sparse": False}
    assert "one pick" not in _line(verdict(_planted(sparsity=few)), "Null")
    many = {**sparsity, "n_fwer_05": 2000, "frac_fwer_05": 0.005, "sparse": True}
    assert "one pick among 2000 passing units (fewer than 1% pass: sparse)" in _line(
        verdict(_planted(sparsity=many)), "Null"
    )
    none = {**sparsity, "n_fwer_05": 0, "frac_fwer_05": 0.0}
    top = [{**row, "p_fwer": 0.4} for row in REFERENCE["top_neurons"]]
    line = _line(verdict(_planted(sparsity=none, top_neurons=top)), "Null")
    assert "none of the 3 top units among them" in line
    assert "best score of 0.776, so the top scores are not told apart from chance" in line


def test_without_permutations_the_null_names_its_flag():
    line = _line(verdict(_planted(significance=None)), "Not run: the permutation null")
    assert "`--permutations 199`" in line
    assert not any(line.startswith("Null") for line in verdict(_planted(significance=None)))


def test_attribution_counts_the_top_units_also_in_the_attribution_top_k():
    line = _line(verdict(REFERENCE), "Attribution")
    assert "0 of the top 3 by |score| are also in the top 3 by |effect|" in line
    assert "candidates (past the FWER null and an effect excluding 0): 0." in line
    assert (
        "1 of the top 3 by |score| has an effect whose 95% interval (per unit, unadjusted)" in line
    )
    one = dict(REFERENCE["attribution"], n_in_both_top=1, n_candidates=1)
    line = _line(verdict(_planted(attribution=one)), "Attribution")
    assert "1 of the top 3 by |score| is also in the top 3" in line
    off = verdict(_planted(attribution=None))  # the study writes null when not run
    assert "`--attribute`" in _line(off, "Not run: attribution")


def _causal_row(p: float, positive_p: float) -> dict:
    return {**REFERENCE["causal"][0], "p_loss": p, "positive_p_loss": positive_p}


def test_the_causal_wording_turns_on_the_rank_p_and_the_bound_is_an_upper_bound():
    significant = causal_sentence(_causal_row(0.03, 0.01))
    plain = causal_sentence(_causal_row(0.30, 0.30))
    assert "(rank p = 0.030 among 3 random sets). At 0.05 it differs from the random" in significant
    assert "(rank p = 0.300 among 3 random sets). At 0.05 it is not told apart" in plain
    for text in (significant, plain):
        assert (
            "exclude an excess larger than 0.0010 nats (5.9% of the prompt's own effect), an "
            "upper bound on the top-K's excess over random sets." in text
        )
    assert "Positive control (3 units): +0.0049, rank p = 0.010: detected at 0.05." in significant
    small = causal_sentence({**_causal_row(0.3, 0.3), "bound_loss_share_of_prompt": 0.00049})
    assert "(0.05% of the prompt's own effect)" in small  # the RQ2 re-run's said "0.0%"
    assert "rank p = 0.300: not detected at 0.05" in plain
    lines = verdict(_planted(causal=[_causal_row(0.03, 0.01), REFERENCE["causal"][1]]))
    assert _line(lines, "Causal check, mean ablation") == f"Causal check, {significant}"
    assert _line(lines, "Causal check, zero ablation").startswith("Causal check, zero ablation: ")
    assert "`--ablate`" in _line(verdict(_planted(causal=None)), "Not run: the causal check")


def test_the_contrast_and_the_stabilities_read_their_numbers():
    contrast = {
        "compared": "x", "n_units": 256, "n_permutations": 999, "n_fwer_0.05": 40,
        "n_selected": 3, "n_selected_fwer_0.05": 2, "rank_correlation": 0.5, "top_k": 3,
        "top_k_overlap": 0.2,
    }  # fmt: skip
    lines = verdict(_planted(contrast={"untrained": contrast, "no_prompt": {
        **contrast, "n_selected_fwer_0.05": 0}}))  # fmt: skip
    changed = _line(lines, "Contrast with untrained")
    assert "40 of 256 units change past the FWER null at 0.05 (999 permutations), 2 of the 3" in (
        changed
    )
    assert "told apart" not in changed
    assert "no selected unit's score is told apart from the baseline's" in _line(
        lines, "Contrast with no_prompt"
    )
    assert "`--contrast untrained,no_prompt`" in _line(verdict(REFERENCE), "Not run: the prompt")

    seeds = _line(lines, "Seeds")
    assert "mean Jaccard overlap of 0.00" in seeds and "no two seeds share a top unit" in seeds
    shared = {"mean_jaccard": 0.5, "mean_rank_corr": 0.8}
    assert "share" not in _line(verdict(_planted(stability=shared)), "Seeds")
    assert "`--seeds 0,1,2`" in _line(verdict(_planted(stability=None)), "Not run: seed")

    boot = {"k": 3, "n_boot": 200, "examples": "x", "mean_stay_share": 0.62,
            "outside_share": 0.1, "n_candidates": 30}  # fmt: skip
    line = _line(verdict(_planted(selection_stability=boot)), "Bootstrap")
    assert "stay in the top 3 in 62% of the resamples" in line
    assert "`--bootstrap 200`" in _line(verdict(REFERENCE), "Not run: the bootstrap")


def test_no_sentence_says_more_than_its_numbers():
    full = _planted(
        causal=[_causal_row(0.9, 0.9)],
        held_out={**REFERENCE["held_out"], "n_adjusted_ci_excludes_0": 0},
    )
    text = " ".join(verdict(full) + verdict(_planted(significance=None, causal=None)))
    for claim in ("no causal role", "no effect", "encodes", "proves", "proof", "causes"):
        assert claim not in text.lower()
