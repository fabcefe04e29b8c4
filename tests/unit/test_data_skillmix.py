"""Skill-Mix: variety, no surface giveaway of the skill."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.special
import scipy.stats

from sklens.data.skillmix import generate_skillmix


def test_skillmix_generator_has_variety_and_no_giveaway_word():
    examples = generate_skillmix(600, seed=0)
    assert len({e.instruction for e in examples}) == 600
    assert {e.meta["skill"] for e in examples} == {"spatial", "metaphor"}
    words = {}
    for e in examples:
        for w in set(re.findall(r"[a-z']+", e.instruction.lower())):
            words.setdefault(w, set()).add(e.meta["skill"])
    per_skill = {
        s: [
            set(re.findall(r"[a-z']+", e.instruction.lower()))
            for e in examples
            if e.meta["skill"] == s
        ]
        for s in ("spatial", "metaphor")
    }
    for w in words:  # no word appears in every item of one skill and no item of the other
        for s, other in (("spatial", "metaphor"), ("metaphor", "spatial")):
            assert not (
                all(w in ws for ws in per_skill[s]) and not any(w in ws for ws in per_skill[other])
            )


PUNCTUATION = ".,?!:;'\"-()"


def _surface_features(pieces):
    """Per item: length, '?' present, each punctuation mark's count, the final piece (one-hot).

    ``pieces`` is each item cut into tokens or characters; no feature looks at what a word means.
    """
    finals = sorted({p[-1] for p in pieces})
    rows = []
    for p in pieces:
        text = "".join(p)
        rows.append(
            [len(p), "?" in text]
            + [text.count(c) for c in PUNCTUATION]
            + [p[-1] == f for f in finals]
        )
    return np.array(rows, dtype=float)


def _auroc(scores, positive):
    """Mann-Whitney AUROC, ties counted half."""
    ranks = scipy.stats.rankdata(scores)
    n1 = positive.sum()
    n0 = len(positive) - n1
    return (ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _logistic_cv_auroc(x, y, *, folds=5, l2=1e-2, seed=0):
    """AUROC of out-of-fold scores of a ridge logistic regression (Newton steps), ``folds``-fold CV."""
    order = np.random.default_rng(seed).permutation(len(y))
    scores = np.empty(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9  # standardised on the training folds
        z = np.c_[np.ones(len(x)), (x - mu) / sd]
        a, t = z[train], y[train].astype(float)
        w = np.zeros(a.shape[1])
        penalty = l2 * len(train) * np.diag([0.0] + [1.0] * (a.shape[1] - 1))
        for _ in range(50):
            prob = scipy.special.expit(a @ w)
            grad = a.T @ (prob - t) + penalty @ w
            hess = (a * (prob * (1 - prob))[:, None]).T @ a + penalty
            w -= np.linalg.solve(hess, grad)
        scores[test] = z[test] @ w
    return _auroc(scores, y)


@pytest.mark.parametrize("seed", [0, 1])
def test_skillmix_surface_features_do_not_separate_skills(qwen_dir, seed):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_dir)
    examples = generate_skillmix(600, seed=seed)
    y = np.array([e.meta["skill"] == "spatial" for e in examples])
    tokens = [
        [tok.decode([i]) for i in tok.encode(e.instruction, add_special_tokens=False)]
        for e in examples
    ]
    chars = [list(e.instruction) for e in examples]
    for skill in ("spatial", "metaphor"):  # both skills as questions and as instructions
        finals = [e.instruction[-1] for e in examples if e.meta["skill"] == skill]
        assert set(finals) == {"?", "."} and 0.35 <= finals.count("?") / len(finals) <= 0.65
    for pieces in (tokens, chars):
        x = _surface_features(pieces)
        assert _logistic_cv_auroc(x, y) <= 0.65
        for column in x.T:  # nor does any one feature alone, in either direction
            assert abs(_auroc(column, y) - 0.5) <= 0.15
