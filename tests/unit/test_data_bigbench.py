"""BigBench arithmetic: format, meta fields, the last-digit shortcut flag, bad files."""

from __future__ import annotations

import json
import re

import pytest

import sklens
from sklens.data.bigbench import (
    last_digit_decides,
    last_digit_unique,
    operand_last_digit,
    task_examples,
    true_result,
)


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


@pytest.mark.parametrize(
    ("scores", "problem"),
    [
        ({"116549": 0, "2": 0, "banana": 0}, "scores no choice above 0: it has no correct answer"),
        ({"116549": 1, "2": 1, "banana": 0}, "scores 2 choices highest ('116549', '2')"),
    ],
)
def test_case_I4_I5_an_example_without_one_correct_choice_is_refused(tmp_path, scores, problem):
    """The reliability probe's I4 (all scored 0: used with its first choice as the answer) and I5
    (two scored 1: the first taken silently): refused, naming the file, line and example."""
    good = {"input": "What is 1 plus 1?", "target_scores": {"2": 1, "3": 0}}
    bad = {"input": "What is 68824 plus 47725?", "target_scores": scores}
    path = tmp_path / "5_digit_addition" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"examples": [good, bad]}, indent=1))
    with pytest.raises(ValueError, match=rf"task.json:\d+: example 1 {re.escape(problem)}"):
        task_examples(path)
