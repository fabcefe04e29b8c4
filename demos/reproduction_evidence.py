"""Sentences the doc computes from a run's saved files where ``summary.json`` holds no number for
them: whether selection by |score| is enriched for causal effect (``scan.safetensors`` against
``attribution.safetensors``), how the trained prompt's accuracy compares with always giving the
causal split's most common answer (the split rebuilt from the run's settings), and the
dose-response over k (``dose_response.csv``). Each names the files it reads.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from reproduction_runs import Run
from reproduction_text import ALPHA, fmt, sourced
from scipy import stats

import sklens
from sklens.app.rundir import read_summary
from sklens.app.study import study_task

N_TOP = 100  # the top units by |score| whose effects are compared with random sets of as many
N_SETS = 9_999  # random sets of N_TOP units: the enrichment's permutation p reaches 1e-4
LABEL_SET = 5  # at most this many distinct answers: a label task, where a majority answer exists


def enrichment(scores: np.ndarray, effects: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How |score| ranks units by |effect|: Spearman ρ over all units, and the median |effect|
    of the ``N_TOP`` units of largest |score| over the median of all units, with its permutation
    p (the share of ``N_SETS`` random sets of ``N_TOP`` units whose median is as large)."""
    scores, effects = np.abs(scores.ravel()), np.abs(effects.ravel())
    rho = float(stats.spearmanr(scores, effects).statistic)
    top = np.argsort(-scores, kind="stable")[:N_TOP]
    observed = float(np.median(effects[top]))
    rng = np.random.default_rng(seed)
    medians = np.array(
        [np.median(effects[rng.choice(len(effects), N_TOP, replace=False)]) for _ in range(N_SETS)]
    )
    return {
        "n": len(scores),
        "rho": rho,
        "ratio": observed / float(np.median(effects)),
        "p": float((1 + np.sum(medians >= observed)) / (N_SETS + 1)),
    }


def enrichment_sentence(run: Run) -> str | None:
    """Are the units of largest |score| the ones whose ablation moves the loss most?"""
    scan_file = run.run_dir / "scan.safetensors"
    attribution_file = run.run_dir / "attribution.safetensors"
    if not (scan_file.exists() and attribution_file.exists()):
        return None
    scan, attribution = sklens.Scan.load(scan_file), sklens.Attribution.load(attribution_file)
    reduce = run.summary["config"]["select"]["reduce"]
    scores = scan.scores(reduce)[0][attribution.layers]
    effects = attribution.effect.abs().amax(-1)  # the largest over the slots
    e = enrichment(scores.double().numpy(), effects.numpy())
    enriched = (
        "larger than random sets' (enriched)"
        if e["p"] < ALPHA
        else ("not told apart from random sets'")
    )
    return sourced(
        f"Over all {e['n']} units, \\|score\\| and the largest attributed \\|effect\\| over the "
        f"slots have Spearman ρ = {fmt(e['rho'])}; the {N_TOP} units of largest \\|score\\| "
        f"have a median \\|effect\\| {fmt(e['ratio'], 2)}× that of all units, "
        f"{enriched}: permutation p = {fmt(e['p'], 4)} among {N_SETS} random sets of {N_TOP}",
        "scan.safetensors, attribution.safetensors",
    )


def majority(answers: list[str]) -> tuple[str, float] | None:
    """The most common answer and its share, where the answers are a small label set (HANS's
    two labels); None where nearly every question has its own answer (arithmetic)."""
    counts = Counter(answers)
    if not answers or len(counts) > LABEL_SET:
        return None
    answer, n = counts.most_common(1)[0]
    return answer, n / len(answers)


def accuracy_sentence(run: Run) -> str | None:
    """The trained prompt's accuracy on the causal split beside the majority answer's share
    (a prompt at the majority level answers no better than a constant)."""
    row = next(iter(run.summary.get("causal") or []), None)
    acc = None if row is None else row.get("accuracy_base")
    if not isinstance(acc, float) or not math.isfinite(acc):
        return None  # no choices, or not scored
    _, config = read_summary(run.run_dir)
    causal = study_task(config).causal
    answers = [str(e.meta["answer"]) for e in causal if "answer" in e.meta]
    found = majority(answers)
    if found is None:
        return None
    answer, share = found
    side = "above" if acc > share else "equal to" if acc == share else "below"
    return sourced(
        f"With the trained prompt the model picks the right answer on {fmt(acc)} of the "
        f"{len(answers)} causal-split questions, {side} the {fmt(share)} of always answering "
        f"'{answer}', the split's most common answer",
        "causal[0].accuracy_base; the causal split rebuilt from config",
    )


def dose_sentences(run: Run) -> list[str]:
    """Per ranking, the top-k's change of loss at each k beside the random sets' median, and the
    k where the rank p is under 0.05."""
    table = run.csv("dose_response.csv")
    if table is None:
        return []
    out = []
    overall = table[table.group == "all"]
    for ranking, part in overall.groupby("ranking", sort=False):
        steps, unusual, n_random = [], [], 0
        for k, at_k in part.groupby("k"):
            selected = at_k[at_k.set == "selected"].iloc[0]
            randoms = at_k[at_k.set.str.startswith("random_")]
            n_random = len(randoms)
            steps.append(
                f"k = {k}: {fmt(selected.d_loss, 4)} (random median "
                f"{fmt(float(randoms.d_loss.median()), 4)}, p {fmt(selected.p_loss)})"
            )
            if selected.p_loss < ALPHA:
                unusual.append(str(k))
        where = f"p < 0.05 at k = {', '.join(unusual)}" if unusual else "p ≥ 0.05 at every k"
        out.append(
            sourced(
                f"Ablating the top k by {ranking} changes the loss by {'; '.join(steps)}, each k "
                f"against {n_random} random sets (smallest possible p {fmt(1 / (n_random + 1))}): "
                f"{where}",
                "dose_response.csv",
            )
        )
    return out


def evidence_sentences(run: Run) -> list[str]:
    """The sentences above that the run's files allow."""
    found = [accuracy_sentence(run), enrichment_sentence(run), *dose_sentences(run)]
    return [s for s in found if s]
