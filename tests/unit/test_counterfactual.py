"""Counterfactual pairs: the edits flip one property and keep the rest; a unit that reads the
edited property moves and random units do not; every number against a direct computation."""

from __future__ import annotations

import functools
import random
import re

import numpy as np
import pytest
import torch
from scipy import stats as ss

import sklens
from sklens.causal import edits
from sklens.causal.counterfactual import sign_flip_p
from sklens.data.bigbench import (
    arithmetic_instruction,
    arithmetic_meta,
    last_digit_decides,
    last_digit_unique,
)
from tests.unit.test_explain import _marked


def _question(a: int, op: str, b: int, choices: list[str], answer: str) -> sklens.Example:
    question = f"What is {a} {op} {b}?"
    return sklens.Example(
        arithmetic_instruction(question, choices),
        answer,
        {"subtask": "test", **arithmetic_meta(question, choices, answer)},
    )


def _swap_marker(e: sklens.Example) -> sklens.Example | None:
    if "apple" not in e.instruction:
        return None
    return sklens.Example(e.instruction.replace("apple", "stone"), e.completion, {**e.meta})


def test_sign_flip_p_equals_scipy_exact_and_monte_carlo():
    rng = np.random.default_rng(0)
    changes = torch.tensor(rng.normal(0.4, 1, (9, 3)))
    ours = sign_flip_p(changes)
    for j in range(3):
        ref = ss.permutation_test(
            (changes[:, j].numpy(),), np.mean, permutation_type="samples", n_resamples=np.inf
        )
        assert ours[j] == pytest.approx(ref.pvalue, abs=1e-12)
    changes = torch.tensor(rng.normal(0.3, 1, (40, 2)))
    ours = sign_flip_p(changes, n_permutations=20_000, seed=1)
    ref = [
        ss.permutation_test(
            (changes[:, j].numpy(),), np.mean, permutation_type="samples", n_resamples=20_000,
            rng=np.random.default_rng(2),
        ).pvalue
        for j in range(2)
    ]  # fmt: skip
    assert ours.numpy() == pytest.approx(ref, abs=0.01)


def test_last_digit_edits_flip_only_the_shortcut():
    # 23 × 47 = 1081: the operands' last digits give 1; "2081" shares it, so it does not decide
    shares = _question(23, "times", 47, ["1081", "2081", "1084"], "1081")
    assert not shares.meta["last_digit_decides"]
    twin = edits.last_digit_decides(shares, True)
    assert twin.meta["last_digit_decides"] and twin.completion == shares.completion
    assert twin.meta["choices"] == ["1081", "2082", "1084"]  # one digit of one distractor
    assert twin.instruction.splitlines()[0] == shares.instruction.splitlines()[0]
    question = "What is 23 times 47?"
    assert twin.meta["last_digit_decides"] == last_digit_decides(
        question, twin.meta["choices"], "1081"
    ) and twin.meta["last_digit_unique"] == last_digit_unique(
        question, twin.meta["choices"], "1081"
    )
    back = edits.last_digit_decides(twin, False)
    assert not back.meta["last_digit_decides"] and back.meta["choices"] == ["1081", "2081", "1084"]
    assert edits.last_digit_decides(twin, True) is None  # already decides: no twin gains it
    assert edits.last_digit_decides(_question(5, "plus", 6, ["11", "21"], "11"), True) is None


def test_only_negative_edits_and_hans_twins():
    neg = _question(12, "minus", 40, ["-28", "-38", "28"], "-28")
    assert not neg.meta["answer_only_negative"]
    only = edits.answer_only_negative(neg, True)
    assert only.meta["choices"] == ["-28", "38", "28"] and only.meta["answer_only_negative"]
    assert not edits.answer_only_negative(only, False).meta["answer_only_negative"]
    assert edits.answer_only_negative(_question(40, "minus", 12, ["28", "38"], "28")) is None
    twins = 0
    for e in sklens.data.generate_hans(48, seed=0):
        twin = edits.hans_twin(e)
        if twin is None:
            assert e.meta["subcase"] not in (
                "ln_subject/object_swap", "le_passive", "cn_embedded_under_if",
                "ce_embedded_under_since",
            )  # fmt: skip
            continue
        twins += 1
        assert twin.meta["label"] != e.meta["label"] and twin.completion == twin.meta["label"]
        assert twin.meta["heuristic"] == e.meta["heuristic"]
        hypothesis = re.search(r"Hypothesis: (.*)\n", e.instruction).group(1)
        assert f"Hypothesis: {hypothesis}\n" in twin.instruction  # the hypothesis is kept
        words = set(re.findall(r"[a-z]+", e.instruction.lower()))
        new = set(re.findall(r"[a-z]+", twin.instruction.lower()))
        assert len(words ^ new) <= 4  # "was", "by" or the subordinator's words only
        assert edits.hans_twin(twin).instruction == e.instruction  # the twin's twin
    assert twins == 16  # 4 of the 12 subcases, 48 examples balanced over them


def test_pairs_keeps_what_it_can_edit_and_refuses_a_useless_edit():
    data = _marked(20, seed=0)
    made, note = edits.pairs(data, _swap_marker)
    assert note == {"edit": "_swap_marker", "tried": 20, "paired": len(made)} and 0 < len(made)
    with pytest.raises(ValueError, match="applies to none of the 20 examples"):
        edits.pairs(data, lambda e: None, name="nothing")
    with pytest.raises(ValueError, match="unchanged"):
        edits.pairs(data, lambda e: e)
    with pytest.raises(TypeError, match="must return an Example or None, got str"):
        edits.pairs(data, lambda e: "x")


def test_a_unit_that_reads_the_edited_property_moves_and_random_units_do_not(qwen):
    data = _marked(220, seed=0)
    prompt = sklens.SoftPrompt.init_for(qwen, 4, seed=0)
    metric = sklens.metrics.label("marker", "A")
    top = sklens.scan(qwen, prompt, data[:100], metric, progress=False).top_k(1)
    made, _ = edits.pairs(data[100:], _swap_marker)  # fresh examples: apple -> stone
    found = sklens.counterfactual(qwen, prompt, made, top, n_random=30, progress=False)
    unit = found.units.iloc[0]
    # the paired change equals a direct reading of the activations before and after
    before = sklens.slot_activations(qwen, prompt, [a for a, _ in made], top)[:, 0, unit.slot]
    after = sklens.slot_activations(qwen, prompt, [b for _, b in made], top)[:, 0, unit.slot]
    assert unit.d_act == pytest.approx(float((after - before).double().mean()), rel=1e-5)
    assert unit.d_std == pytest.approx(
        float((after - before).double().mean() / before.double().std()), rel=1e-5
    )
    assert unit.d_act_lo < unit.d_act < unit.d_act_hi
    assert unit.p < 1e-3 and abs(unit.d_std) > 1.5
    assert unit.p_vs_random == pytest.approx(1 / 31)  # it moves more than all 30 random units
    assert unit.random_abs_d_std_median < abs(unit.d_std) / 2
    # the loss change is evaluate's, pair by pair
    loss0 = sklens.evaluate(qwen, prompt, [a for a, _ in made]).loss
    loss1 = sklens.evaluate(qwen, prompt, [b for _, b in made]).loss
    row = found.behaviour.set_index("measure").loc["loss"]
    assert row.change == pytest.approx(float((loss1 - loss0).mean()), rel=1e-6)
    # an edit of the meta only changes no activation at all
    same = [(a, sklens.Example(a.instruction, a.completion, {**a.meta, "x": 1})) for a, _ in made]
    null = sklens.counterfactual(qwen, prompt, same, top, n_random=0, progress=False)
    assert null.units.d_act.iloc[0] == 0 and null.units.p.iloc[0] == 1
    assert "p_vs_random" not in null.units


def test_choice_changes_on_multiple_choice_pairs(qwen):
    rng = random.Random(0)
    questions = []
    for _ in range(12):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        product = a * b
        rival = str(product + 10 * rng.randint(1, 9))  # shares the last digit: no shortcut
        questions.append(_question(a, "times", b, [str(product), rival, str(product + 3)],
                                   str(product)))  # fmt: skip
    made, _ = edits.pairs(questions, functools.partial(edits.last_digit_decides, decide=True))
    assert len(made) == 12 and all(b.meta["last_digit_decides"] for _, b in made)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    top = sklens.scan(qwen, prompt, questions, sklens.metrics.loss(), progress=False).top_k(2)
    found = sklens.counterfactual(qwen, prompt, made, top, n_random=5, progress=False)
    table = found.behaviour.set_index("measure")
    assert {"loss", "accuracy", "accuracy_per_token", "choice_changed"} <= set(table.index)
    base = sklens.evaluate(qwen, prompt, [a for a, _ in made])
    edited = sklens.evaluate(qwen, prompt, [b for _, b in made])
    assert table.loc["accuracy", "change"] == pytest.approx(
        float((edited.correct - base.correct).mean())
    )
    assert table.loc["choice_changed", "after"] == pytest.approx(
        float((edited.chosen != base.chosen).mean())
    )


def test_counterfactual_errors(qwen):
    data = _marked(30, seed=4)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    top = sklens.scan(
        qwen, prompt, data, sklens.metrics.label("marker", "A"), progress=False
    ).top_k(1)
    made, _ = edits.pairs(data, _swap_marker)
    with pytest.raises(ValueError, match="at least 5 pairs, got 2"):
        sklens.counterfactual(qwen, prompt, made[:2], top, progress=False)
    with pytest.raises(ValueError, match="needs each unit's slot"):
        sklens.counterfactual(qwen, prompt, made, [(0, 1)], progress=False)
    with pytest.raises(TypeError, match="pairs must be"):
        sklens.counterfactual(qwen, prompt, [a for a, _ in made], top, progress=False)
