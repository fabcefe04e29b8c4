"""Loaders and generators: formats, meta fields, the shortcut flag, splits, bad files."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.special
import scipy.stats

import sklens
from sklens.data.bigbench import (
    last_digit_decides,
    last_digit_unique,
    operand_last_digit,
    task_examples,
    true_result,
)
from sklens.data.hans import HEURISTICS, generate_hans, load_hans
from sklens.data.jsonl import load_jsonl
from sklens.data.skillmix import generate_skillmix, load_skillmix
from sklens.data.split import train_val_split


def _bigbench_file(tmp_path, examples):
    path = tmp_path / "5_digit_multiplication" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"name": "5_digit_multiplication", "examples": examples}))
    return path


MULT = [
    {
        "input": "What is 68824 times 42716?",
        "target": "2939885984",
        "target_scores": {
            "9033448237": 0.0,
            "3839424325": 0.0,
            "18962582": 0.0,
            "564059290591": 0.0,
            "banana": 0.0,
            "house": 0.0,
            "2939885984": 1.0,
        },
    },
    {
        "input": "What is 12 times 13?",
        "target": "156",
        "target_scores": {"146": 0.0, "157": 0.0, "banana": 0.0, "156": 1.0},
    },
]


def test_bigbench_shape_meta_and_shortcut(tmp_path):
    examples = task_examples(_bigbench_file(tmp_path, MULT), shuffle_choices=False)
    first = examples[0]
    assert first.instruction == (
        "Question: What is 68824 times 42716?\nChoices: 9033448237, 3839424325, 18962582, "
        "564059290591, banana, house, 2939885984\nAnswer:"
    )
    assert first.completion == "2939885984"
    assert first.meta["operation"] == "multiplication" and first.meta["digits"] == 5
    assert first.meta["result"] == 68824 * 42716 and first.meta["answer"] == "2939885984"
    # only the correct choice ends in 4 = last digit of 4 * 6: the last digit decides
    assert first.meta["last_digit_decides"] is True and first.meta["last_digit_unique"] is True
    # 146 and 156 both end in 6 = 2 * 3: the last digit does not decide
    assert examples[1].meta["last_digit_decides"] is False
    assert examples[1].meta["last_digit_unique"] is False


# The paper's example (Section 3, RQ3), exactly as in bigbench==1.0.0's 5_digit_multiplication.
PAPER_EXAMPLE = {
    "input": "What is 56510 times 52373?",
    "target": "2959598230",
    "target_scores": {
        "8256942891": 0.0,
        "6856058598": 0.0,
        "16619555": 0.0,
        "204563610029": 0.0,
        "banana": 0.0,
        "house": 0.0,
        "2959598230": 1.0,
    },
}


def test_paper_example_is_the_shortcut(tmp_path):
    # 0 * 3 = 0, and 2959598230 is the only choice ending in 0
    path = _bigbench_file(tmp_path, [PAPER_EXAMPLE])
    for shuffle in (False, True):
        (e,) = task_examples(path, shuffle_choices=shuffle)
        assert e.meta["last_digit_decides"] is True and e.meta["last_digit_unique"] is True
    assert operand_last_digit(56510, "multiplication", 52373) == 0


def _brute_unique(a, op, b, choices, answer):
    """Reference: the answer is the only numeric choice ending in the exact result's last digit."""
    if op == "divided by":
        return None
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    digit = str(abs(result))[-1]
    return [c for c in choices if re.fullmatch(r"-?\d+", c) and c[-1] == digit] == [answer]


def test_shortcut_flags_agree_with_brute_arithmetic(tmp_path):
    import random

    rng = random.Random(0)
    ops = ("plus", "minus", "times", "divided by")
    raw = []
    for i in range(800):
        op = ops[i % 4]
        a, b = rng.randint(0, 99999), rng.randint(1, 99999)
        if op == "divided by":
            a = a * b
        answer = str(
            {"plus": a + b, "minus": a - b, "times": a * b, "divided by": a // max(b, 1)}[op]
        )
        # wrong choices: sometimes sharing the answer's last digit, sometimes not
        wrong = [str(rng.randint(-(10**6), 10**10)) for _ in range(rng.randint(1, 4))]
        choices = dict.fromkeys(wrong, 0.0) | {"banana": 0.0, "house": 0.0, answer: 1.0}
        raw.append({"input": f"What is {a} {op} {b}?", "target": answer, "target_scores": choices})
    examples = task_examples(_bigbench_file(tmp_path, raw), seed=1)
    counts = {}
    for e, ex in zip(examples, raw, strict=True):
        a, op, b = re.fullmatch(r"What is (\d+) (.+) (\d+)\?", ex["input"]).groups()
        unique = _brute_unique(int(a), op, int(b), e.meta["choices"], e.meta["answer"])
        assert e.meta["last_digit_unique"] == unique
        assert e.meta["last_digit_decides"] == (op == "times" and unique)
        counts[op, unique] = counts.get((op, unique), 0) + 1
    # the generated data reaches both outcomes for + - x, and None for division only
    assert {k for k in counts if k[0] != "divided by"} == {
        (op, u) for op in ("plus", "minus", "times") for u in (True, False)
    }
    assert {k for k in counts if k[0] == "divided by"} == {("divided by", None)}


def test_operand_last_digit_with_signs():
    # the operands' last digits and signs give the digit of |result|, checked exhaustively
    for a in range(-30, 31):
        for b in range(-30, 31):
            for op, name in (
                (a + b, "addition"),
                (a - b, "subtraction"),
                (a * b, "multiplication"),
            ):
                assert operand_last_digit(a, name, b) == abs(op) % 10, (a, name, b)
            assert operand_last_digit(a, "division", b) is None
    with pytest.raises(ValueError, match="unknown operation 'modulo'"):
        operand_last_digit(1, "modulo", 2)


def test_choices_are_shuffled_deterministically(tmp_path):
    path = _bigbench_file(tmp_path, MULT * 10)
    a, b = task_examples(path, seed=0), task_examples(path, seed=0)
    assert [e.instruction for e in a] == [e.instruction for e in b]
    lasts = {e.meta["choices"][-1] for e in a}
    assert len(lasts) > 1  # the correct answer is not always last any more
    assert all(
        sorted(e.meta["choices"]) == sorted(MULT[i % 2]["target_scores"]) for i, e in enumerate(a)
    )


def test_true_result_and_flag_edge_cases():
    assert true_result("What is 77568 divided by 48?") == 1616
    assert true_result("What is 58458 minus 68759?") == -10301
    assert true_result("What is 7 divided by 2?") is None
    assert true_result("Name a colour.") is None
    # 58458 - 68759 = -10301: the operands give 8 - 9 = -1 = 9 mod 10, and as 58458 < 68759 the
    # result is negative, so the digit written is 10 - 9 = 1
    minus = "What is 58458 minus 68759?"
    assert last_digit_unique(minus, ["-10301", "436550", "banana"], "-10301") is True
    assert last_digit_unique(minus, ["-10301", "436551", "banana"], "-10301") is False
    assert last_digit_decides(minus, ["-10301", "436550", "banana"], "-10301") is False
    division = "What is 77568 divided by 48?"
    assert last_digit_unique(division, ["1616", "93", "banana"], "1616") is None
    assert last_digit_decides(division, ["1616", "93", "banana"], "1616") is False
    assert last_digit_unique("Name a colour.", ["12", "banana"], "12") is None
    assert last_digit_decides("Name a colour.", ["12", "banana"], "12") is False


def test_bad_bigbench_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json:1: not valid JSON .*truncated or damaged"):
        task_examples(bad)
    bad.write_text(json.dumps({"examples": [{"target": "1"}]}))
    with pytest.raises(ValueError, match="bad.json:1: example 0 needs a string 'input'"):
        task_examples(bad)
    with pytest.raises(ValueError, match="unknown arithmetic subtasks"):
        sklens.data.bigbench.bigbench_arithmetic(["7_digit_addition"])


HANS_HEADER = (
    "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tpairID\theuristic\tsubcase\ttemplate\n"
)


def test_hans_official_format(tmp_path):
    path = tmp_path / "heuristics_evaluation_set.txt"
    path.write_text(
        HANS_HEADER + "non-entailment\t-\t-\t-\t-\tThe doctor saw the lawyer .\tThe lawyer saw the "
        "doctor .\tex0\tlexical_overlap\tln_subject/object_swap\ttemp1\n"
        + "entailment\t-\t-\t-\t-\tSince the judge slept , the actor ran .\tThe judge "
        "slept .\tex1\tconstituent\tce_embedded_under_since\ttemp2\n"
    )
    examples = load_hans(path)
    assert [e.completion for e in examples] == ["non-entailment", "entailment"]
    assert examples[0].meta == {
        "heuristic": "lexical_overlap",
        "subcase": "ln_subject/object_swap",
        "label": "non-entailment",
        "template": "temp1",
        "pair_id": "ex0",
    }
    assert "Premise: The doctor saw the lawyer ." in examples[0].instruction
    path.write_text(HANS_HEADER + "maybe\t-\t-\t-\t-\ta\tb\tex\tlexical_overlap\tx\tt\n")
    with pytest.raises(ValueError, match=r"heuristics_evaluation_set.txt:2: gold_label 'maybe'"):
        load_hans(path)
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a HANS file"):
        load_hans(path)


def test_hans_truncated_line_names_file_and_line(tmp_path):
    path = tmp_path / "heuristics_evaluation_set.txt"
    good = (
        "entailment\t-\t-\t-\t-\tSince the judge slept , the actor ran .\tThe judge "
        "slept .\tex1\tconstituent\tce_embedded_under_since\ttemp2\n"
    )
    path.write_text(HANS_HEADER + good + "\n" + good + "non-entailment\t-\t-\t-\t-\tThe doctor")
    with pytest.raises(
        ValueError,
        match=r"heuristics_evaluation_set.txt:5: 6 tab-separated fields, the header has 11",
    ):
        load_hans(path)
    path.write_text(HANS_HEADER + good.replace("\tex1", "\tex\t1"))
    with pytest.raises(ValueError, match=r"txt:2: 12 tab-separated fields"):
        load_hans(path)
    path.write_text(HANS_HEADER + good.replace("The judge slept .", ""))
    with pytest.raises(ValueError, match=r"txt:2: empty field\(s\) \['sentence2'\]"):
        load_hans(path)
    # a quote is text, not the start of a quoted field running over the next lines
    path.write_text(HANS_HEADER + good.replace("The judge", '"The judge') + good)
    assert [e.meta["pair_id"] for e in load_hans(path)] == ["ex1", "ex1"]
    # a file in another encoding: an error naming the file and line, not a codec traceback
    path.write_bytes((HANS_HEADER + good + good.replace("judge", "juge été")).encode("latin-1"))
    with pytest.raises(ValueError, match=r"txt:3: not UTF-8 text \(byte 0xe9\)"):
        load_hans(path)


def test_hans_generator_covers_every_heuristic_and_label():
    examples = generate_hans(240, seed=0)
    cells = {(e.meta["heuristic"], e.meta["label"]) for e in examples}
    assert cells == {(h, lab) for h in HEURISTICS for lab in ("entailment", "non-entailment")}
    assert len({e.meta["subcase"] for e in examples}) == 12
    assert all(e.completion == e.meta["label"] for e in examples)
    assert [e.instruction for e in generate_hans(30, seed=3)] == [
        e.instruction for e in generate_hans(30, seed=3)
    ]


# McCoy et al.'s labels: the n subcases are non-entailed, the e subcases entailed.
HANS_LABELS = {
    "ln_subject/object_swap": "non-entailment",
    "ln_preposition": "non-entailment",
    "le_passive": "entailment",
    "le_conjunction": "entailment",
    "sn_NP/S": "non-entailment",
    "sn_PP_on_subject": "non-entailment",
    "se_PP_on_obj": "entailment",
    "se_relative_clause_on_obj": "entailment",
    "cn_embedded_under_if": "non-entailment",
    "cn_disjunction": "non-entailment",
    "ce_embedded_under_since": "entailment",
    "ce_adverb": "entailment",
}
# Words that open a clause, and whether the clause they open is asserted (factive) or not.
OPENERS_ASSERTED = ("since", "because", "now that", "certainly", "clearly", "obviously")
OPENERS_NOT_ASSERTED = ("if", "unless", "whether or not", "or")


def _premise_hypothesis(example):
    premise, hypothesis = example.instruction.splitlines()[:2]
    return premise.split(": ", 1)[1], hypothesis.split(": ", 1)[1]


def _words(sentence):
    return re.findall(r"[a-z]+", sentence.lower())


def _contiguous(part, whole):
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def _clauses(sentence):
    """{clause words: opener} for the premise's clauses that are complete constituents.

    The sentence is cut at commas and the final period. A piece is a constituent clause when it
    begins the sentence or begins with a clause opener (the opener is removed); a piece after a
    comma without an opener (the main clause after "If ...,") is not: there the subject and verb
    hang off the sentence node, not off a node of their own.
    """
    out = {}
    for i, piece in enumerate(re.split(r"[,.]", sentence.lower())):
        words = _words(piece)
        for opener in OPENERS_ASSERTED + OPENERS_NOT_ASSERTED:
            if words[: len(opener.split())] == opener.split():
                out[tuple(words[len(opener.split()) :])] = opener
                break
        else:
            if i == 0 and words:
                out[tuple(words)] = None
    return out


def _events(sentence):
    """(agent, verb, patient) triples a transitive lexical-overlap sentence asserts."""
    s = sentence.lower()
    prep = r"(?:near|behind|beside|next to|in front of)"
    if m := re.fullmatch(r"the (\w+) was (\w+) by the (\w+)\.", s):
        return {(m[3], m[2], m[1])}
    if m := re.fullmatch(r"the (\w+) and the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[3], m[4]), (m[2], m[3], m[4])}
    if m := re.fullmatch(r"the (\w+) (\w+) the (\w+) and the (\w+)\.", s):
        return {(m[1], m[2], m[3]), (m[1], m[2], m[4])}
    if m := re.fullmatch(rf"the (\w+) {prep} the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[3], m[4])}
    if m := re.fullmatch(r"the (\w+) (\w+) the (\w+)\.", s):
        return {(m[1], m[2], m[3])}
    raise AssertionError(f"unexpected lexical-overlap sentence {sentence!r}")


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_hans_pairs_follow_mccoy_heuristics(seed):
    counts = {}
    for e in generate_hans(1200, seed=seed):
        premise, hypothesis = _premise_hypothesis(e)
        p, h = _words(premise), _words(hypothesis)
        subcase, heuristic = e.meta["subcase"], e.meta["heuristic"]
        assert e.meta["label"] == HANS_LABELS[subcase] == e.completion
        assert set(h) <= set(p), (premise, hypothesis)  # every heuristic overlaps fully
        clauses = _clauses(premise)
        if heuristic == "lexical_overlap":
            assert not _contiguous(h, p), (premise, hypothesis)
            # entailed exactly when the premise asserts the hypothesis's event
            (event,) = _events(hypothesis)
            assert (event in _events(premise)) == (e.meta["label"] == "entailment")
        elif heuristic == "subsequence":
            assert _contiguous(h, p) and len(h) < len(p), (premise, hypothesis)
            assert tuple(h) not in clauses, (premise, hypothesis)
        else:
            assert heuristic == "constituent"
            assert _contiguous(h, p) and len(h) < len(p), (premise, hypothesis)
            # a complete clause of the premise, entailed exactly when its opener asserts it
            assert tuple(h) in clauses, (premise, hypothesis)
            asserted = clauses[tuple(h)] in OPENERS_ASSERTED
            assert asserted == (e.meta["label"] == "entailment"), (premise, hypothesis)
        counts[heuristic] = counts.get(heuristic, 0) + 1
    assert counts == dict.fromkeys(HEURISTICS, 400)


def test_hans_varies_templates_within_subcases():
    templates = {}
    for e in generate_hans(1200, seed=0):
        templates.setdefault(e.meta["subcase"], set()).add(e.meta["template"])
    assert len(templates["ln_preposition"]) == 3  # HANS temp2-4
    assert len(templates["le_conjunction"]) == 2  # HANS temp32-33
    assert len(templates["cn_disjunction"]) == 2


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


def test_skillmix_and_jsonl_loaders_name_the_bad_line(tmp_path):
    path = tmp_path / "skills.jsonl"
    path.write_text(
        '{"question": "Where is the cup?", "answer": "On the table.", "skill": "spatial"}\n\n'
        '{"question": "Q", "answer": "A"}\n'
    )
    with pytest.raises(ValueError, match=r"skills.jsonl:3: missing field 'skill'"):
        load_skillmix(path)
    path.write_text(
        '{"question": "Where is the cup?", "answer": "On the table.", "skill": "spatial", "id": 4}\n'
    )
    (e,) = load_skillmix(path)
    assert e.meta == {"skill": "spatial", "id": 4} and e.completion == "On the table."
    task = tmp_path / "task.jsonl"
    task.write_text('{"instruction": "a", "completion": "b", "group": 1}\n{"instruction": "a"\n')
    with pytest.raises(ValueError, match=r"task.jsonl:2: not valid JSON"):
        load_jsonl(task)
    task.write_text('{"instruction": "a", "completion": 3}\n')
    with pytest.raises(
        ValueError, match=r"task.jsonl:1: field 'completion' must be a non-empty string"
    ):
        load_jsonl(task)
    task.write_text('["a", "b"]\n')
    with pytest.raises(ValueError, match=r"task.jsonl:1: expected a JSON object"):
        load_jsonl(task)
    task.write_text('{"instruction": "a", "completion": "b", "group": 1}\n')
    assert load_jsonl(task)[0].meta == {"group": 1}


def test_split_is_deterministic_and_disjoint():
    examples = generate_skillmix(50, seed=0)
    train, val = train_val_split(examples, 0.2, seed=3)
    again = train_val_split(examples, 0.2, seed=3)
    assert (train, val) == again and len(val) == 10 and len(train) == 40
    assert not {e.instruction for e in train} & {e.instruction for e in val}
    with pytest.raises(ValueError, match="leaves no train"):
        train_val_split(examples, 50)
