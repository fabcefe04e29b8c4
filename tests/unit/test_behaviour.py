"""``sklens.behaviour``: per-group means and the difference equal numpy on ``sklens.evaluate``'s
per-example table, intervals around them, and bad groupings refused before any forward pass."""

from __future__ import annotations

import numpy as np
import pytest

import sklens
from sklens.causal import behaviour as behaviour_mod


def _multiplications() -> list[sklens.Example]:
    return sklens.data.bigbench_arithmetic(["2_digit_multiplication"], n_per_subtask=24)


def test_group_means_and_difference_equal_numpy_on_evaluate(qwen):
    examples = _multiplications()
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    table = sklens.behaviour(qwen, prompt, examples, "last_digit_decides", n_boot=200)
    per_example = sklens.evaluate(qwen, prompt, examples)  # the independent per-example numbers
    flag = np.array([e.meta["last_digit_decides"] for e in examples])
    assert 2 <= flag.sum() <= len(flag) - 2  # both groups present in this slice
    for measure, column in (("loss", "loss"), ("accuracy", "correct")):
        rows = table[table.measure == measure].set_index("group")
        values = per_example[column].to_numpy(dtype=float)
        assert rows.loc["True", "mean"] == pytest.approx(values[flag].mean())
        assert rows.loc["False", "mean"] == pytest.approx(values[~flag].mean())
        assert rows.loc["True", "n"] == flag.sum()
        # groups in sorted order: "False" minus "True"
        assert rows.loc["difference", "mean"] == pytest.approx(
            values[~flag].mean() - values[flag].mean()
        )
        for group in ("True", "False", "difference"):
            lo, mean, hi = rows.loc[group, ["lo", "mean", "hi"]]
            assert lo <= mean + 1e-12 and mean - 1e-12 <= hi
    assert table.attrs["chance_accuracy"] == pytest.approx(
        np.mean([1 / len(e.meta["choices"]) for e in examples])
    )


def test_without_choices_only_the_loss_is_reported(qwen):
    examples = [
        sklens.Example(e.instruction, e.completion, {"kind": i % 2})
        for i, e in enumerate(_multiplications()[:8])
    ]
    table = sklens.behaviour(qwen, None, examples, "kind", n_boot=50)
    assert set(table.measure) == {"loss"} and table.attrs["chance_accuracy"] is None


@pytest.mark.parametrize(
    ("by", "message"),
    [
        ("colour", "have no meta field 'colour'"),
        ("operation", r"two or more groups of at least 2 examples, got \{'multiplication': 24\}"),
    ],
)
def test_bad_groupings_are_refused_before_any_pass(qwen, monkeypatch, by, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran before the grouping was checked")

    monkeypatch.setattr(behaviour_mod, "evaluate", forbidden)
    with pytest.raises(ValueError, match=message):
        sklens.behaviour(qwen, None, _multiplications(), by)
