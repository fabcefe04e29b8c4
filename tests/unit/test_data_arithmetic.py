"""The generated BigBench arithmetic task: its shape, its rule against BigBench's originals, its
determinism, and the shortcut's prevalence against the probability the rule implies."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

import sklens
from sklens.data.arithmetic import (
    N_QUESTIONS,
    SUBTASKS,
    arithmetic_task,
    distractors,
    write_arithmetic,
)
from sklens.data.bigbench import true_result
from tests.unit.test_data_bigbench import MULT, PAPER_EXAMPLE

# Original questions of bigbench==1.0.0's 5-digit subtasks with all their numeric distractors, as
# earlier sklens runs kept them (docs/reproduction/rq3*/least_activating.csv): answer, distractors.
ORIGINALS = [
    ("What is 80328 plus 58052?", "138380", ("85039056", "149211", "3653", "271305")),
    ("What is 68547 plus 33818?", "102365", ("994905", "218323", "4924", "11818145")),
    ("What is 33653 plus 68566?", "102219", ("10360788", "732928", "964937", "8189")),
    ("What is 40681 plus 80770?", "121451", ("554504", "95265713", "685136", "9520")),
    ("What is 26071 plus 94451?", "120522", ("5956", "38155104", "804266", "800731")),
    ("What is 57077 plus 55365?", "112442", ("896881", "4991", "60170562", "886476")),
    ("What is 18777 times 90673?", "1702566921", ("22516924", "582259223468", "4689004614",
                                                  "6278636845")),
    ("What is 74617 plus 97322?", "171939", ("932313", "8122", "45183616", "982706")),
    ("What is 84867 plus 66160?", "151027", ("674093", "19890201", "964286", "1963")),
    ("What is 59913 times 81294?", "4870567422", ("1152487889", "23773169", "6260988679",
                                                  "130594009306")),
    ("What is 42812 times 51570?", "2207814840", ("9415523281", "854486182733", "47549647",
                                                  "8127851667")),
    ("What is 63128 times 23259?", "1468294152", ("733630282294", "2285912094", "4486330574",
                                                  "78477800")),
    ("What is 84535 times 67172?", "5678385020", ("35342830", "4805849200", "8778977902",
                                                  "653100331485")),
    ("What is 78494 times 56093?", "4402963942", ("7303125736", "291475295918", "6554488855",
                                                  "28997744")),
    ("What is 62297 plus 44083?", "106380", ("418886", "661097", "31570979", "3264")),
    ("What is 46911 times 18681?", "876344391", ("688588006", "603099096", "69217137444",
                                                 "8852125")),
    ("What is 84072 plus 67028?", "151100", ("465883", "80883378", "290553", "9711")),
    ("What is 34497 minus 69096?", "-34599", ("29804555", "267958", "6913", "503052")),
    ("What is 98099 times 83206?", "8162425394", ("614282216688", "8285343280", "50532231",
                                                  "5919673442")),
]  # fmt: skip
for _ex in (MULT[0], PAPER_EXAMPLE):
    _numbers = [c for c in _ex["target_scores"] if c not in ("banana", "house", _ex["target"])]
    ORIGINALS.append((_ex["input"], _ex["target"], tuple(_numbers)))


def _lengths(numbers):
    return sorted(len(n) for n in numbers)


@pytest.mark.parametrize(("question", "answer", "originals"), ORIGINALS)
def test_the_generators_distractor_rule_fits_every_original(question, answer, originals):
    assert str(true_result(question)) == answer
    made = distractors(int(answer), random.Random(question))
    assert _lengths(made) == _lengths(originals)  # two as long, one two shorter, one two longer
    assert all(not n.startswith("-") for n in originals + tuple(made))  # never negative


def test_original_order_is_kept_same_length_shorter_longer_then_words_then_answer():
    for original in (MULT[0], PAPER_EXAMPLE):
        keys = list(original["target_scores"])
        length = len(original["target"])
        assert [len(k) for k in keys[:4]] == [length, length, length - 2, length + 2]
        assert keys[4:] == ["banana", "house", original["target"]]
    made = arithmetic_task("5_digit_multiplication")["examples"][0]
    keys, length = list(made["target_scores"]), len(made["target"])
    assert [len(k) for k in keys[:4]] == [length, length, length - 2, length + 2]
    assert keys[4:] == ["banana", "house", made["target"]]


def _distinct_questions(digits, op):
    """Brute force, independent of the generator: how many distinct questions a subtask has."""
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    if op != "division":
        return (high - low + 1) ** 2
    return sum(
        sum(1 for b in range(2, a + 1) if a % b == 0) or 1 for a in range(max(low, 1), high + 1)
    )


@pytest.mark.parametrize("subtask", SUBTASKS)
def test_every_subtask_has_bigbench_shape_and_true_answers(subtask):
    digits, _, op = subtask.split("_", 2)
    digits = int(digits)
    task = arithmetic_task(subtask)
    examples = task["examples"]
    space = _distinct_questions(digits, op) if digits <= 2 else math.inf
    assert task["name"] == subtask and len(examples) == min(N_QUESTIONS, space)
    assert len({e["input"] for e in examples}) == len(examples)  # distinct questions
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    for e in examples:
        a, word, b = re.fullmatch(r"What is (\d+) (\w+(?: by)?) (\d+)\?", e["input"]).groups()
        a, b = int(a), int(b)
        assert low <= a <= high
        if op == "division":  # exact, by a divisor of the dividend other than 1
            assert a % b == 0 and (b != 1 or a == 1)
        else:
            assert low <= b <= high
        assert e["target"] == str(true_result(e["input"]))
        scores = e["target_scores"]
        assert list(scores)[-1] == e["target"] and scores[e["target"]] == 1.0
        assert sum(scores.values()) == 1.0 and len(scores) == len(set(scores))
        assert {"banana", "house"} <= set(scores)
        assert len(scores) == (7 if len(e["target"]) >= 3 else 6)


def test_generated_is_deterministic_and_seeded():
    again = arithmetic_task("5_digit_addition")
    assert arithmetic_task("5_digit_addition") == again
    assert arithmetic_task("5_digit_addition", seed=1) != again
    pool = sklens.data.bigbench_arithmetic(n_per_subtask=3)
    full = sklens.data.bigbench_arithmetic()
    assert pool == [e for start in (0, 1000, 2000, 3000) for e in full[start : start + 3]]
    shifted = sklens.data.bigbench_arithmetic(n_per_subtask=3, pool_seed=1)
    assert {e.instruction for e in shifted}.isdisjoint({e.instruction for e in pool})


def test_shortcut_prevalence_is_what_the_rule_implies():
    pool = sklens.data.bigbench_arithmetic(["5_digit_multiplication"])
    decides = sum(e.meta["last_digit_decides"] for e in pool)
    p, n = 0.9**4, len(pool)  # no distractor of four, each with a uniform last digit, matches
    assert abs(decides - n * p) < 3.3 * math.sqrt(n * p * (1 - p))  # 99.9% binomial band
    subtraction = sklens.data.bigbench_arithmetic(["5_digit_subtraction"])
    negative = [e.meta["result"] < 0 for e in subtraction]
    assert [e.meta["answer_only_negative"] for e in subtraction] == negative


def test_written_files_read_back_as_the_same_examples(tmp_path):
    subtasks = ["2_digit_multiplication", "3_digit_division"]
    write_arithmetic(tmp_path, subtasks)
    assert json.loads((tmp_path / "3_digit_division" / "task.json").read_text()) == (
        arithmetic_task("3_digit_division")
    )
    from_files = sklens.data.load_bigbench(tmp_path)
    assert from_files == sklens.data.bigbench_arithmetic(subtasks)
    assert sklens.data.bigbench_arithmetic(subtasks, data=tmp_path) == from_files


def test_original_files_are_read_when_given(tmp_path):
    folder = tmp_path / "5_digit_multiplication"
    folder.mkdir()
    (folder / "task.json").write_text(json.dumps({"examples": [PAPER_EXAMPLE]}))
    (e,) = sklens.data.bigbench_arithmetic(["5_digit_multiplication"], data=tmp_path)
    assert e.completion == "2959598230" and e.meta["last_digit_decides"] is True
    with pytest.raises(FileNotFoundError, match="has no 5_digit_addition/task.json.*leave data"):
        sklens.data.bigbench_arithmetic(["5_digit_addition"], data=tmp_path)
    with pytest.raises(ValueError, match="n_per_subtask must be a positive number"):
        sklens.data.bigbench_arithmetic(n_per_subtask=0)
