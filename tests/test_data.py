"""Loaders and generators: formats, meta fields, the shortcut flag, splits, bad files."""

from __future__ import annotations

import json
import re

import pytest

import sklens
from sklens.data.bigbench import last_digit_decides, task_examples, true_result
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
    assert first.meta["last_digit_decides"] is True
    # 146 and 156 both end in 6: the last digit does not decide
    assert examples[1].meta["last_digit_decides"] is False


def test_shortcut_flag_agrees_with_arithmetic_on_generated_questions(tmp_path):
    import random

    rng = random.Random(0)
    raw = []
    for _ in range(200):
        a, b = rng.randint(10000, 99999), rng.randint(10000, 99999)
        wrong = [str(rng.randint(10**8, 10**10)) for _ in range(4)]
        choices = {w: 0.0 for w in wrong} | {"banana": 0.0, str(a * b): 1.0}
        raw.append(
            {"input": f"What is {a} times {b}?", "target": str(a * b), "target_scores": choices}
        )
    for e in task_examples(_bigbench_file(tmp_path, raw), seed=1):
        a, b = map(int, re.findall(r"\d+", e.instruction.splitlines()[0]))
        digit = (a % 10) * (b % 10) % 10
        same = [c for c in e.meta["choices"] if c[-1].isdigit() and int(c[-1]) == digit]
        assert e.meta["last_digit_decides"] == (same == [str(a * b)])
        assert e.meta["result"] == a * b


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
    assert last_digit_decides(["-10301", "436550", "banana"], "-10301", -10301)
    assert not last_digit_decides(["12", "banana"], "12", None)


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


def test_hans_generator_covers_every_heuristic_and_label():
    examples = generate_hans(240, seed=0)
    cells = {(e.meta["heuristic"], e.meta["label"]) for e in examples}
    assert cells == {(h, lab) for h in HEURISTICS for lab in ("entailment", "non-entailment")}
    assert len({e.meta["subcase"] for e in examples}) == 12
    assert all(e.completion == e.meta["label"] for e in examples)
    assert [e.instruction for e in generate_hans(30, seed=3)] == [
        e.instruction for e in generate_hans(30, seed=3)
    ]
    # lexical overlap non-entailment really reuses the premise's words
    for e in examples:
        if e.meta["subcase"] == "ln_subject/object_swap":
            premise, hypothesis = e.instruction.splitlines()[:2]
            words = [
                re.findall(r"[a-z]+", line.lower().split(":", 1)[1])
                for line in (premise, hypothesis)
            ]
            assert sorted(words[0]) == sorted(words[1])


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
