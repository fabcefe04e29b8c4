"""Finished pieces of long computations (``sklens.parts``): a killed causal check or seed study
goes on from its last piece, reuses only pieces of the same settings, and ends with the table an
uninterrupted run makes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sklens
import sklens.causal.check as check_mod
from sklens.causal.check import causal_check, dose_response
from sklens.confirm.stability import seed_stability
from sklens.parts import Parts, digest

_EVALUATE = check_mod.evaluate


class _Killed(Exception):
    """Stands for a kill: the check stops where it is."""


class _Passes:
    """Counts the causal check's edited passes; with ``fail_after`` raises like a kill there."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.n, self.fail_after = 0, fail_after
        real = _EVALUATE  # not an earlier counter's wrapper

        def counted(*args, **kwargs):
            if kwargs.get("intervention") is not None:
                if self.fail_after is not None and self.n >= self.fail_after:
                    raise _Killed
                self.n += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(check_mod, "evaluate", counted)


def test_a_piece_round_trips_exactly_and_only_under_its_own_context(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"example": range(5), "loss": rng.normal(size=5) * 1e-7 + 2.0,
                          "chosen": [0.0, np.nan, 2.0, 1.0, 0.0]})  # fmt: skip
    parts = Parts(tmp_path, {"model": "m", "prompt": torch.arange(3.0)})
    assert parts.load("mean-random_0", [(1, 2)]) is None
    parts.save("mean-random_0", [(1, 2)], table)
    back = parts.load("mean-random_0", [(1, 2)])
    assert back.loss.to_numpy().tobytes() == table.loss.to_numpy().tobytes()  # bit for bit
    pd.testing.assert_frame_equal(back, table)
    assert parts.load("mean-random_0", [(1, 3)]) is None  # another set
    other = Parts(tmp_path, {"model": "m", "prompt": torch.arange(3.0) + 1e-6})
    assert other.load("mean-random_0", [(1, 2)]) is None  # another prompt
    assert digest(torch.zeros(2)) != digest(torch.zeros(2, dtype=torch.float64))


def test_a_killed_causal_check_goes_on_from_its_last_set(qwen, examples, tmp_path, monkeypatch):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    kw = dict(modes=("zero", "mean"), n_random=4, seed=0, progress=False, n_boot=100,
              positive="layers")  # fmt: skip
    whole = causal_check(qwen, prompt, examples[:8], [(0, 3), (1, 4)], **kw)
    n_sets = 2 * (4 + 2)  # two modes × (selected, positive, 4 random)

    killed = _Passes(monkeypatch, fail_after=5)
    with pytest.raises(_Killed):
        causal_check(qwen, prompt, examples[:8], [(0, 3), (1, 4)], parts=tmp_path, **kw)
    assert killed.n == 5 and len(list(tmp_path.glob("*.csv"))) == 5

    resumed = _Passes(monkeypatch)
    table = causal_check(qwen, prompt, examples[:8], [(0, 3), (1, 4)], parts=tmp_path, **kw)
    assert resumed.n == n_sets - 5  # only the sets the kill left undone
    pd.testing.assert_frame_equal(table, whole)

    again = _Passes(monkeypatch)
    other = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    causal_check(qwen, other, examples[:8], [(0, 3), (1, 4)], parts=tmp_path, **kw)
    assert again.n == n_sets  # another prompt: nothing reused
    causal_check(qwen, prompt, examples[:8], [(0, 3), (1, 5)], parts=tmp_path, **kw)
    # another selection: new random sets drawn for it; the positive set (every unit of the
    # same two layers) is the same edit and is reused, once per mode
    assert again.n == n_sets + 2 * 5


def test_dose_response_keeps_each_k_apart(qwen, examples, tmp_path, monkeypatch):
    ranked = pd.DataFrame({"layer": [0, 1, 1], "unit": [3, 4, 7]})
    kw = dict(ks=(1, 3), mode="zero", n_random=3, seed=0, progress=False, n_boot=50)
    whole = dose_response(qwen, None, examples[:6], ranked, **kw)
    first = _Passes(monkeypatch)
    dose_response(qwen, None, examples[:6], ranked, parts=tmp_path, **kw)
    resumed = _Passes(monkeypatch)
    table = dose_response(qwen, None, examples[:6], ranked, parts=tmp_path, **kw)
    assert first.n == 2 * 4 and resumed.n == 0
    pd.testing.assert_frame_equal(table, whole)


def test_seed_stability_takes_a_trained_prompt_for_its_seed(qwen, examples, tmp_path):
    """The study passes its own prompt for its seed: the same tables as training it again."""
    train, val = examples[:16], examples[16:28]
    kw = dict(seeds=(0, 1), k=3, progress=False, n_slots=2, steps=3, batch_size=4,
              baselines=False)  # fmt: skip
    trained = sklens.train_soft_prompt(qwen, train, n_slots=2, steps=3, batch_size=4, seed=0,
                                       progress=False)  # fmt: skip
    fresh = seed_stability(qwen, train, val, "loss", **kw)
    reused = seed_stability(qwen, train, val, "loss", trained={0: trained},
                            checkpoints=tmp_path, **kw)  # fmt: skip
    pd.testing.assert_frame_equal(reused.jaccard, fresh.jaccard)
    pd.testing.assert_frame_equal(reused.consensus, fresh.consensus)
    assert not (tmp_path / "seed0").exists() and (tmp_path / "seed1" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match=r"seeds \[5\] that are not among seeds=\[0, 1\]"):
        seed_stability(qwen, train, val, "loss", trained={5: trained}, **kw)
