"""Markdown read off demo runs (``reproduction_runs.Run``): the table with the paper beside each
run, and the account, sentence by sentence, each naming the ``summary.json`` key or CSV it reads.

Nothing here computes a statistic the run did not: it reads the run's numbers, and turns two of
them into the unit they are stated in (a Jaccard overlap of two top-K sets into the units they
share; a multiple-choice chance level over the numeric choices only). The account reuses
``sklens.verdict``'s sentences, which say no more than their numbers (an interval holding 0 is
"not told apart from 0", a causal bound is a bound, never an absence), and adds the study-level
sentences the paper's claims need: the threshold comparison, the prompt contrast per unit, the
shortcut behaviour, the controls, and what does and does not reproduce.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from reproduction_runs import MAIN, NEGATIVE_CONTROL, Run

import sklens

ALPHA = 0.05
NOT_REPORTED = "not reported"
NOT_RUN = "not run"

# what each surface hypothesis of ``sklens.explain`` counts (``explanation/hypotheses.py``)
SURFACE = {
    "n_tokens": "the number of tokens in the instruction",
    "n_words": "the number of whitespace-separated words in the instruction",
    "n_numbers": "the number of numbers in the instruction (operands and numeric choices alike)",
    "n_digits": "the number of digit characters in the instruction",
    "has_negative_number": "whether the instruction holds a negative number",
    "longest_number_digits": "the digits of the instruction's longest number",
    "last_token": "the instruction's last token",
}

# which summary.json key each of ``sklens.verdict``'s sentences reads, by its opening words
VERDICT_SOURCES = (
    ("Found", "top_neurons, sparsity"),
    ("Held out", "held_out, heldout.csv"),
    ("Null", "sparsity"),
    ("Attribution", "attribution"),
    ("Causal check", "causal"),
    ("Contrast", "contrast"),
    ("Seeds", "stability"),
    ("Bootstrap", "selection_stability"),
    ("Basis", "basis_test"),
    ("Not run", "config"),
)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for the doc; None and NaN read as "n/a"."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.1e}"
    return str(value)


def ci(mean: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    return f"{fmt(mean, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def excludes_0(lo: float, hi: float) -> bool:
    return lo > 0 or hi < 0


def sourced(sentence: str, source: str) -> str:
    """A sentence with the key it reads beside it, before its full stop."""
    return f"{sentence.rstrip('.')} (`{source}`)."


# ---- numbers stated in their own units ----


def seed_shared_units(run: Run) -> tuple[float, int] | None:
    """The mean number of top-K units two seeds' top-K sets share, from the Jaccard overlaps in
    ``stability_jaccard.csv`` (J = s / (2K − s), so s = 2KJ / (1 + J)); and K."""
    table = run.csv("stability_jaccard.csv")
    if table is None:
        return None
    k = len(run.summary["top_neurons"])
    seeds = [name for name in table["run"] if name.startswith("seed")]
    table = table.set_index("run")
    shared = [
        2 * k * table.loc[a, b] / (1 + table.loc[a, b])
        for i, a in enumerate(seeds)
        for b in seeds[i + 1 :]
    ]
    return (sum(shared) / len(shared), k) if shared else None


def numeric_chance(run: Run) -> float | None:
    """Chance accuracy counting only the numeric choices ("banana" and "house" are decoys no
    reader would pick), over the behaviour comparison's kind of question in ``examples.csv``."""
    table = run.csv("examples.csv")
    where = (run.summary.get("behaviour") or {}).get("where") or ""
    if table is None:
        return None
    if "=" in where:
        field, value = where.split("=", 1)
        table = table[table[f"meta.{field}"].astype(str) == value]
    counts = []
    for text in table.drop_duplicates("example")["instruction"]:
        line = next((s for s in text.splitlines() if s.startswith("Choices:")), "")
        numbers = [c for c in line[len("Choices:") :].split(",") if re.fullmatch(r"\s*-?\d+\s*", c)]
        counts += [len(numbers)] if numbers else []
    return sum(1 / c for c in counts) / len(counts) if counts else None


def upper_bound(k: int, n: int) -> float:
    """The upper end of the Clopper–Pearson 95% interval of a share, ``k`` of ``n``: the share
    at which ``k`` or fewer happen with probability 0.025 (a bootstrap interval of 0 of n
    changed picks is [0, 0], which excludes nothing honestly). Bisection on the binomial CDF."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        p = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
        lo, hi = (p, hi) if cdf > 0.025 else (lo, p)
    return (lo + hi) / 2


def hypothesis_name(name: str) -> str:
    """An explain hypothesis named for what it counts: ``n_numbers = 7`` becomes "n_numbers = 7
    (the number of numbers in the instruction, ...)"."""
    field = name.split(" ")[0]
    return f"{name} ({SURFACE[field]})" if field in SURFACE else name


# ---- the table: one row per quantity, one column per run ----

Cell = Callable[[Run], "str | None"]


def _training(run: Run) -> str:
    t = run.summary["training"]
    plateau = t["plateau"]
    stop = "plateau" if plateau["stopped"] else f"the cap of {t['max_steps']}, before a plateau"
    return (
        f"{plateau['steps']} steps ({stop}); held-out loss {fmt(t['first']['val_loss'], 2)} → "
        f"{fmt(plateau['best_val_loss'], 2)}"
    )


def _threshold(run: Run) -> str:
    return fmt(run.summary["sparsity"]["top_k_threshold"])


def _above_paper(run: Run) -> str:
    s = run.summary["sparsity"]
    share = run.study["paper"]["frac_above_threshold"]
    return f"{share:.2%} of {s['n_units']} ({round(share * s['n_units'])} units)"


def _fwer(run: Run) -> str:
    s = run.summary["sparsity"]
    return (
        f"{s['n_fwer_05']} of {s['n_units']} ({s['frac_fwer_05']:.2%}); null max 95% "
        f"{fmt(s['null_max_95'])}; 99th percentile of \\|score\\| {fmt(s['abs_score_99'])}"
    )


def _top_row(run: Run, name: str) -> Any:
    table = run.csv("heldout.csv")
    return None if table is None or name not in table else table.iloc[0]


def _held_out(run: Run) -> str:
    h, top = run.summary["held_out"], _top_row(run, "r_heldout")
    k = len(run.summary["top_neurons"])
    text = (
        f"mean {fmt(h['mean_r_heldout'])} (in-sample {fmt(h['mean_r_select'])}); "
        f"{h['n_adjusted_ci_excludes_0']} of {k} adjusted intervals exclude 0"
    )
    if top is not None:
        text += f"; top unit {ci(top.r_heldout, top.r_lo_adj, top.r_hi_adj)} (adjusted)"
    return text


def _auroc(run: Run) -> str | None:
    top = _top_row(run, "auroc")
    if top is None:
        return None
    mean = run.summary["held_out"].get("mean_auroc")
    return f"top unit {ci(top.auroc, top.auroc_lo, top.auroc_hi)}; mean of the top-K {fmt(mean)}"


def _seeds(run: Run) -> str | None:
    shared = seed_shared_units(run)
    if shared is None:
        return None
    units, k = shared
    rank = run.summary["stability"]["mean_rank_corr"]
    return f"{units:.2f} units of {k} ({units / k:.0%}); rank correlation {fmt(rank)}"


def _contrast(baseline: str) -> Cell:
    def cell(run: Run) -> str | None:
        s = (run.summary.get("contrast") or {}).get(baseline)
        if s is None:
            return None
        return (
            f"{s['n_selected_fwer_0.05']} of {s['n_selected']} selected, {s['n_fwer_0.05']} of "
            f"{s['n_units']} units differ (FWER 0.05); thresholds {fmt(s['top_k_threshold_trained'])}"
            f" trained vs {fmt(s['top_k_threshold_baseline'])}; rank correlation "
            f"{fmt(s['rank_correlation'])}"
        )

    return cell


def _attribution(run: Run) -> str | None:
    s = run.summary.get("attribution")
    if not s:
        return None
    return (
        f"{s['n_in_both_top']} in both top-K; {s['n_corr_top_with_effect_excluding_0']} with an "
        f"effect excluding 0; {s['n_candidates']} candidates"
    )


def _causal_row(run: Run, mode: str) -> dict[str, Any] | None:
    rows = [row for row in run.summary.get("causal") or [] if row["mode"] == mode]
    return rows[0] if rows else None


def _causal(mode: str) -> Cell:
    def cell(run: Run) -> str | None:
        row = _causal_row(run, mode)
        if row is None:
            return None
        n = row["n_random"]
        return (
            f"Δ loss {ci(row['d_loss'], row['d_loss_lo'], row['d_loss_hi'], 4)} vs random median "
            f"{fmt(row['random_d_loss_median'], 4)}; rank p {fmt(row['p_loss'])} among {n} sets "
            f"(floor {fmt(1 / (n + 1))}); bound {fmt(row.get('bound_loss'), 4)} nats"
        )

    return cell


def _positive(mode: str) -> Cell:
    def cell(run: Run) -> str | None:
        row = _causal_row(run, mode)
        if row is None or "positive_d_loss" not in row:
            return None
        return (
            f"{row['positive_n_neurons']} units: Δ loss {fmt(row['positive_d_loss'], 4)}, "
            f"rank p {fmt(row['positive_p_loss'])}"
        )

    return cell


def _accuracy(mode: str) -> Cell:
    def cell(run: Run) -> str | None:
        row = _causal_row(run, mode)
        if row is None or row.get("accuracy_base") != row.get("accuracy_base"):
            return None  # NaN: the task has no choices, or they were not scored
        return (
            f"base {fmt(row['accuracy_base'])}; Δ {fmt(row['d_accuracy'])}, rank p "
            f"{fmt(row['p_accuracy'])}; picks changed {fmt(row['choice_changed'])}"
        )

    return cell


def _bootstrap(run: Run) -> str | None:
    s = run.summary.get("selection_stability")
    if not s:
        return None
    return (
        f"mean stay share {s['mean_stay_share']:.0%} over {s['n_boot']} resamples; outside the "
        f"candidates {s['outside_share']:.0%}"
    )


def behaviour_rows(run: Run, measure: str, prompt: str = "trained") -> dict[str, Any] | None:
    """``behaviour.csv``'s rows of one measure and prompt, by group (``difference`` included)."""
    table = run.csv("behaviour.csv")
    if table is None:
        return None
    rows = table[(table.measure == measure) & (table.prompt == prompt)]
    return {str(r.group): r for r in rows.itertuples()} or None


def _behaviour(measure: str) -> Cell:
    def cell(run: Run) -> str | None:
        rows = behaviour_rows(run, measure)
        if rows is None:
            return None
        groups = ", ".join(
            f"{g}: {fmt(r.mean)} (n = {r.n})" for g, r in rows.items() if g != "difference"
        )
        d = rows["difference"]
        text = f"{groups}; difference {ci(d.mean, d.lo, d.hi)}"
        chance = numeric_chance(run) if measure.startswith("accuracy") else None
        return text + (f"; numeric chance {fmt(chance, 2)}" if chance else "")

    return cell


def _counterfactual(edit: str) -> Cell:
    def cell(run: Run) -> str | None:
        cf = (run.summary.get("counterfactual") or {}).get(edit)
        if not cf or "behaviour" not in cf:
            return None
        loss, picks = cf["behaviour"]["loss"], cf["behaviour"].get("choice_changed")
        text = (
            f"{cf['used']} pairs; largest \\|Δ\\| {fmt(cf['max_abs_d_std'])} SD, min q "
            f"{fmt(cf['min_q'])}, min p vs random {fmt(cf['min_p_vs_random'])}; Δ loss "
            f"{ci(loss['change'], loss['lo'], loss['hi'], 4)}"
        )
        if picks is not None:
            text += f"; picks changed {ci(picks['change'], picks['lo'], picks['hi'])}"
        return text

    return cell


def rows(runs: list[Run]) -> list[tuple[str, str, str, Cell]]:
    """(quantity, paper, source, cell) for one study's runs; rows no run has are left out."""
    study = runs[0].study
    paper = study["paper"]
    out = [
        ("prompt training: steps, held-out loss first → best", "trained (steps not given)",
         "training", _training),
        ("top-10 threshold of \\|score\\|", fmt(paper["threshold"], 2),
         "sparsity.top_k_threshold", _threshold),
        (f"units at or above the paper's threshold {fmt(paper['threshold'], 2)}",
         "its top-10 (the threshold is its 10th score)", "study.json paper.frac_above_threshold",
         _above_paper),
        ("units passing the max-statistic null at FWER 0.05 (sparsity)",
         'sparse ("only a small subset")', "sparsity.n_fwer_05, .null_max_95, .abs_score_99",
         _fwer),
        ("held-out r of the top-K (Bonferroni-adjusted 95% intervals)", NOT_REPORTED,
         "held_out, heldout.csv", _held_out),
        ("held-out AUROC [95% interval]", NOT_REPORTED, "heldout.csv auroc, held_out.mean_auroc",
         _auroc),
        ("seeds: top-K units two seeds share (mean over pairs)", NOT_REPORTED,
         "stability_jaccard.csv, stability.mean_rank_corr", _seeds),
    ]  # fmt: skip
    for baseline in ("untrained", "no_prompt"):
        out.append(
            (f"per-unit contrast with {baseline.replace('_', ' ')}", NOT_REPORTED,
             f"contrast.{baseline}, contrast_{baseline}.csv", _contrast(baseline))
        )  # fmt: skip
    out.append(("attribution: top-K by \\|score\\| and by \\|effect\\|", NOT_REPORTED,
                "attribution, joined.csv", _attribution))  # fmt: skip
    modes = dict.fromkeys(row["mode"] for run in runs for row in run.summary.get("causal") or [])
    for j, mode in enumerate(modes):
        key = f"causal[{j}]"
        out += [
            (f"causal: {mode} ablation of the top-K vs scale-matched random sets",
             "not reported (future work)", f"{key}, causal.csv", _causal(mode)),
            (f"causal: positive control ({mode})", NOT_REPORTED, f"{key}.positive_*",
             _positive(mode)),
            (f"causal: accuracy ({mode})", NOT_REPORTED, f"{key}.accuracy_base, .d_accuracy",
             _accuracy(mode)),
        ]  # fmt: skip
    out.append(("bootstrap stability of the selection", NOT_REPORTED, "selection_stability",
                _bootstrap))  # fmt: skip
    by = next((r.summary["behaviour"]["by"] for r in runs if r.summary.get("behaviour")), None)
    for measure in ("accuracy_per_token", "loss") if by else ():
        out.append(
            (f"behaviour by `{by}` ({measure}, trained prompt)", "the model uses the shortcut "
             "(implied)", "behaviour.csv", _behaviour(measure))
        )  # fmt: skip
    edits = dict.fromkeys(e for run in runs for e in run.summary.get("counterfactual") or {})
    for edit in edits:
        out.append((f"counterfactual `{edit}`: the top-K's paired change, the model's",
                    "implied by the reading" if by else NOT_REPORTED,
                    f"counterfactual.{edit}", _counterfactual(edit)))  # fmt: skip
    return [row for row in out if any(row[3](run) is not None for run in runs)]


def table(runs: list[Run]) -> list[str]:
    """One study's table: the paper, then one column per run, then the source of the row."""
    head = ["quantity", "paper (Qwen1.5-1.8B-Chat)", *(run.label for run in runs), "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for quantity, paper, source, cell in rows(runs):
        cells = [cell(run) or NOT_RUN for run in runs]
        lines.append(f"| {quantity} | {paper} | {' | '.join(cells)} | `{source}` |")
    return lines


# ---- the account: sentences, each with the key it reads ----


def verdict_lines(run: Run) -> list[str]:
    """``sklens.verdict``'s sentences for the run, each with the summary key it reads."""
    out = []
    for sentence in sklens.verdict(run.summary):
        source = next(key for opening, key in VERDICT_SOURCES if sentence.startswith(opening))
        out.append(sourced(sentence, source))
    return out


def threshold_sentence(run: Run) -> str:
    """The top-10 threshold against the paper's, and how many units reach the paper's."""
    s, paper = run.summary["sparsity"], run.study["paper"]
    ours, theirs = s["top_k_threshold"], paper["threshold"]
    side = "above" if ours > theirs else "below" if ours < theirs else "at"
    n_above = round(paper["frac_above_threshold"] * s["n_units"])
    return sourced(
        f"The top-10 threshold of \\|score\\| is {fmt(ours)}, {side} the paper's {fmt(theirs, 2)}; "
        f"{n_above} of {s['n_units']} units ({paper['frac_above_threshold']:.2%}) reach the "
        f"paper's threshold, where in the paper it marks its top 10. A threshold is one order "
        "statistic of one model's scores: it does not say which units carry the metric or why",
        "sparsity.top_k_threshold, study.json paper.frac_above_threshold",
    )


def sparsity_sentence(run: Run) -> str:
    """The FWER count read as what it is: what n examples can detect, beside a measure of the
    scores' upper tail that does not grow with n."""
    s, n = run.summary["sparsity"], run.summary["held_out"]["n_select"]
    if s["n_fwer_05"] == 0:
        reading = "sparsity cannot be judged (no unit passes)"
    else:
        reading = "sparse (fewer than 1%)" if s["sparse"] else "not sparse (at least 1%)"
    return sourced(
        f"{s['n_fwer_05']} of {s['n_units']} units ({s['frac_fwer_05']:.2%}) pass the "
        f"max-statistic null at FWER 0.05; by that count, {reading}. The count grows with the "
        f"{n} selection examples (any unit above the null's {fmt(s['null_max_95'])} passes); "
        f"the 99th percentile of \\|score\\|, {fmt(s['abs_score_99'])} against the top-10's "
        f"{fmt(s['top_k_threshold'])}, does not",
        "sparsity.n_fwer_05, .null_max_95, .abs_score_99",
    )


def seed_sentence(run: Run) -> str | None:
    shared = seed_shared_units(run)
    if shared is None:
        return None
    units, k = shared
    return sourced(
        f"Two prompts trained from different seeds share on average {units:.2f} units of their "
        f"top {k} ({units / k:.0%})",
        "stability_jaccard.csv",
    )


def contrast_sentences(run: Run) -> list[str]:
    """What the per-unit contrast shows, where thresholds alone would be read as the answer."""
    out = []
    for name, s in (run.summary.get("contrast") or {}).items():
        n, k = s["n_selected_fwer_0.05"], s["n_selected"]
        tail = (
            f"{n} of the {k} selected units score differently with the trained prompt"
            if n
            else f"none of the {k} selected units is told apart from its score under it, so the "
            "data neither show nor exclude that training made these units track the metric"
        )
        out.append(
            sourced(
                f"Against {name.replace('_', ' ')} ({s['compared']}), the top-10 threshold is "
                f"{fmt(s['top_k_threshold_baseline'])} against {fmt(s['top_k_threshold_trained'])}"
                f" trained (a threshold alone does not say whether training made units track the "
                f"metric). Per unit, {s['n_fwer_0.05']} of {s['n_units']} units change past the FWER null and "
                f"{tail}",
                f"contrast.{name}",
            )
        )
    return out


def floor_sentences(run: Run) -> list[str]:
    """Each causal rank p beside the smallest p its random sets allow."""
    out = []
    for j, row in enumerate(run.summary.get("causal") or []):
        n, p = row["n_random"], row["p_loss"]
        floor = 1 / (n + 1)
        at = (
            "; it is at that floor, so more random sets could give a smaller p"
            if (p <= floor + 1e-9)
            else ""
        )
        reading = (
            f"The top-K's change of the loss differs from the random sets' at 0.05; the data "
            f"exclude an excess over their median larger than {fmt(row.get('bound_loss'), 4)} "
            "nats"
            if p < ALPHA
            else f"Not telling the top-K apart from random sets bounds their excess (at most "
            f"{fmt(row.get('bound_loss'), 4)} nats); it does not show they have no role"
        )
        out.append(
            sourced(
                f"The {row['mode']} ablation's rank p = {fmt(p)} is among {n} random sets, whose "
                f"smallest possible p is 1/{n + 1} = {fmt(floor)}{at}. {reading}",
                f"causal[{j}].p_loss, .n_random, .bound_loss",
            )
        )
    return out


def behaviour_sentence(run: Run) -> str | None:
    """Whether the model answers the behaviour field's groups differently, with the interval and
    the chance level over the numeric choices."""
    b, rows = run.summary.get("behaviour"), behaviour_rows(run, "accuracy_per_token")
    if not b or rows is None:
        return None
    d = rows["difference"]
    found = (
        "the groups differ"
        if excludes_0(d.lo, d.hi)
        else f"no difference is told apart from 0; the data exclude differences outside "
        f"[{fmt(d.lo)}, {fmt(d.hi)}]"
    )
    chance = numeric_chance(run)
    chance_text = (
        f"; chance among the numeric choices is {fmt(chance, 2)} (the run's chance_accuracy "
        f"{fmt(b['chance_accuracy'], 2)} also counts the decoy choices)"
        if chance
        else ""
    )
    return sourced(
        f"Where {b['where']}, per-token accuracy ({b['groups']}) differs by "
        f"{ci(d.mean, d.lo, d.hi)} with the trained prompt on {d.n} examples: {found}"
        f"{chance_text}. A unit can represent a property the output does not use, so this "
        "tests the model's use of it, not the units'",
        "behaviour.csv, behaviour.chance_accuracy, examples.csv",
    )


def counterfactual_sentences(run: Run) -> list[str]:
    """Each counterfactual edit: did the top-K move, did the model's loss and picks change."""
    out = []
    for edit, cf in (run.summary.get("counterfactual") or {}).items():
        if "behaviour" not in cf:
            continue  # too few examples could be edited
        moved = cf["min_q"] <= ALPHA
        loss, picks = cf["behaviour"]["loss"], cf["behaviour"].get("choice_changed")
        text = (
            f"Editing `{edit}` into {cf['used']} held-out pairs "
            f"{'moves' if moved else 'does not move'} a top unit past q = 0.05: the largest "
            f"paired change is {fmt(cf['max_abs_d_std'])} SD, the smallest Benjamini–Hochberg q "
            f"over the top-K {fmt(cf['min_q'])}, the smallest p against random units of the same "
            f"layer and slot {fmt(cf['min_p_vs_random'])} (uncorrected). The model's loss changes "
            f"by {ci(loss['change'], loss['lo'], loss['hi'], 4)}"
        )
        if picks is not None:
            changed = round(picks["change"] * cf["used"])
            text += (
                f"; it changes {changed} of {cf['used']} picks, and the data exclude a share "
                f"above {fmt(upper_bound(changed, cf['used']))} (Clopper–Pearson, 95%)"
            )
        out.append(sourced(text, f"counterfactual.{edit}, counterfactual_{edit}.csv"))
    return out


def explain_sentence(run: Run) -> str | None:
    """The top unit's best held-out explanation, named for what it counts."""
    table = run.csv("explanations.csv")
    if table is None or table.empty:
        return None
    best = table[table.label == table.label.iloc[0]].iloc[0]
    passes = "passes" if best.passes else "does not pass"
    return sourced(
        f"`sklens.explain`'s best held-out explanation of the top unit ({best.label}) is "
        f"{hypothesis_name(best.hypothesis)}: {best.measure} {ci(best.effect, best.lo, best.hi)}, "
        f"q = {fmt(best.q)} ({passes} q < 0.05), strength {fmt(best.strength)}",
        "explanations.csv",
    )


def control_sentence(control: Run, main: Run | None) -> str:
    """A control run (the label permuted, or a grouped null) beside the main run of its size."""
    s, h = control.summary["sparsity"], control.summary["held_out"]
    config = control.summary["config"]
    what = (
        f"With `{config['shuffle_label']}` permuted among the examples"
        if control.role == NEGATIVE_CONTROL
        else f"Within each {config['scan']['permutation_groups']}"
    )
    text = (
        f"{what}, {s['n_fwer_05']} of {s['n_units']} units pass the FWER null "
        f"and {h['n_adjusted_ci_excludes_0']} of {len(control.summary['top_neurons'])} adjusted "
        "held-out intervals exclude 0"
    )
    if main is not None:
        ms, mh = main.summary["sparsity"], main.summary["held_out"]
        text += f", against {ms['n_fwer_05']} and {mh['n_adjusted_ci_excludes_0']} in {main.label}"
    return sourced(text, "sparsity.n_fwer_05, held_out.n_adjusted_ci_excludes_0")


def reproduces(run: Run) -> list[str]:
    """The paper's claims one by one, each marked as reproduced or not by this run's numbers."""
    s, paper = run.summary["sparsity"], run.study["paper"]
    reached = s["top_k_threshold"] >= paper["threshold"]
    if s["n_fwer_05"] == 0:
        sparse = "cannot be judged: no unit passes the FWER null"
    else:
        sparse = "reproduces" if s["sparse"] else "does not reproduce"
        sparse += f" ({s['frac_fwer_05']:.2%} of units pass the FWER null; the paper's is sparse)"
    h, k = run.summary["held_out"], len(run.summary["top_neurons"])
    out = [
        sourced(
            f"The paper's top-10 threshold {fmt(paper['threshold'], 2)}: "
            f"{'reached' if reached else 'not reached'} ({fmt(s['top_k_threshold'])})",
            "sparsity.top_k_threshold",
        ),
        sourced(f"Sparsity: {sparse}", "sparsity.sparse, .frac_fwer_05"),
        sourced(
            f"The top units' association on examples that did not pick them (not tested in the "
            f"paper): {h['n_adjusted_ci_excludes_0']} of {k} adjusted intervals exclude 0",
            "held_out.n_adjusted_ci_excludes_0",
        ),
    ]
    rows = behaviour_rows(run, "accuracy_per_token")
    if rows is not None:
        d = rows["difference"]
        shown = "shown" if excludes_0(d.lo, d.hi) else "not shown"
        out.append(
            sourced(
                f"That the model answers by `{run.summary['behaviour']['by']}` (the paper's "
                f"reading): {shown} (per-token accuracy difference {ci(d.mean, d.lo, d.hi)})",
                "behaviour.csv",
            )
        )
    out.append(
        "The paper's figures (activations by group) are drawn below for comparison by eye, not "
        "scored."
    )
    return out


def run_sentences(
    run: Run, main: Run | None, extra: Callable[[Run], list[str]] | None = None
) -> list[str]:
    """The study-level sentences of one run (a control's comparison with ``main``), a main
    run's ``extra`` sentences (``reproduction_evidence``: read off its saved files), then
    ``sklens.verdict``'s."""
    if run.role == MAIN:
        found = [
            threshold_sentence(run),
            sparsity_sentence(run),
            seed_sentence(run),
            *contrast_sentences(run),
            *floor_sentences(run),
            behaviour_sentence(run),
            *counterfactual_sentences(run),
            explain_sentence(run),
            *(extra(run) if extra else []),
        ]
    else:
        found = [control_sentence(run, main), *counterfactual_sentences(run)]
    return [s for s in found if s] + verdict_lines(run)


def account(runs: list[Run], extra: Callable[[Run], list[str]] | None = None) -> list[str]:
    """One study's account: the paper's claim, what reproduces (read from the largest main run),
    and every run's sentences (``extra``: see ``run_sentences``)."""
    mains = [run for run in runs if run.role == MAIN]
    primary = mains[-1] if mains else runs[-1]
    lines = [
        f"### {primary.study['title']}",
        "",
        f"The paper: {primary.study['paper']['claim']} (`study.json paper.claim`).",
        "",
        f"**What reproduces and what does not** (read from {primary.label}):",
        "",
        *(f"- {s}" for s in reproduces(primary)),
        "",
    ]
    for run in runs:
        main = next((m for m in mains if m.size == run.size), primary if mains else None)
        lines += [f"**{run.label}** (`{run.study['command']}`):", ""]
        lines += [f"- {s}" for s in run_sentences(run, main, extra)]
        lines.append("")
    return lines
