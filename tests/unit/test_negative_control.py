"""The negative control: a meta field's values permuted among the examples before the splits."""

from __future__ import annotations

from collections import Counter

import pytest

import sklens
from sklens.app.tasks import load_task, shuffled_label


def test_the_shuffled_label_keeps_the_values_and_the_examples_and_breaks_their_pairing():
    kw = dict(n_train=120, n_val=80, seed=3)
    real = load_task("skillmix", **kw)
    shuffled = load_task("skillmix", **kw, shuffle_label="skill")
    for split in ("train", "val"):
        a, b = getattr(real, split), getattr(shuffled, split)
        # the same examples in the same splits: only the label moved
        assert [e.instruction for e in a] == [e.instruction for e in b]
        assert all(x.meta.keys() == y.meta.keys() for x, y in zip(a, b, strict=True))
    both = real.train + real.val
    moved = shuffled.train + shuffled.val
    assert Counter(e.meta["skill"] for e in moved) == Counter(e.meta["skill"] for e in both)
    # a permutation of two balanced values keeps about half of them: far from the real pairing
    same = sum(x.meta["skill"] == y.meta["skill"] for x, y in zip(both, moved, strict=True))
    assert 0.35 < same / len(both) < 0.65
    assert shuffled.source["shuffled_label"] == "skill" and "shuffled_label" not in real.source
    again = load_task("skillmix", **kw, shuffle_label="skill")
    assert [e.meta["skill"] for e in again.val] == [e.meta["skill"] for e in shuffled.val]


def test_a_field_the_examples_lack_is_refused_with_the_fields_they_have():
    examples = [sklens.Example(f"q{i}", "a", {"g": i % 2}) for i in range(6)]
    with pytest.raises(ValueError, match=r"shuffle_label 'skill' is not a meta field.*fields: g"):
        shuffled_label(examples, "skill", 0)


def test_run_study_refuses_it_before_the_model_loads(tmp_path):
    config = sklens.StudyConfig(
        task="skillmix", model=str(tmp_path / "no-such-model"), n_train=16, n_val=16,
        train=sklens.TrainConfig(n_plateau=4), shuffle_label="nope",
    )  # fmt: skip
    with pytest.raises(ValueError, match="shuffle_label 'nope' is not a meta field"):
        sklens.run_study(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
