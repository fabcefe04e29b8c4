"""The study's behaviour and counterfactual stages (``--behaviour-by``, ``--counterfactual``) and
``--no-score-choices``: their files equal the public functions' results on the same examples, and
bad settings fail before any work."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sklens
from sklens.app.cli import main
from sklens.app.tasks import behaviour_examples, counterfactual_pairs
from tests.helpers import forbid_work, run_args


def _args(qwen_dir, out, *extra):
    return run_args(
        *extra, task="arithmetic", model=qwen_dir, out=out, n_train=16, n_val=24, n_confirm=24,
        n_slots=2, batch_size=8, eval_every=2, quiet=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("followups") / "run"
    extra = (
        "--behaviour-by", "last_digit_decides", "--behaviour-where", "operation=multiplication",
        "--counterfactual", "last_digit_decides", "--n-causal", "6", "--n-random", "3",
        "--ablate", "--ablate-modes", "mean", "--no-score-choices",
    )  # fmt: skip
    assert main(_args(qwen_dir, out, *extra)) == 0
    return out


def test_behaviour_csv_equals_evaluate_grouped(run):
    finished = sklens.open_run(run)
    examples = behaviour_examples(finished.config, finished.task)
    assert {e.meta["operation"] for e in examples} == {"multiplication"}
    table = pd.read_csv(run / "behaviour.csv")
    summary = json.loads((run / "summary.json").read_text())["behaviour"]
    assert summary["n"] == len(examples) and summary["where"] == "operation=multiplication"
    flag = np.array([e.meta["last_digit_decides"] for e in examples])
    for name, prompt in (("trained", finished.prompt), ("no_prompt", None)):
        per_example = sklens.evaluate(finished.model, prompt, examples)  # independent numbers
        rows = table[(table.prompt == name) & (table.measure == "accuracy")]
        rows = rows.set_index(rows.group.astype(str))
        correct = per_example.correct.to_numpy(dtype=float)
        assert rows.loc["True", "mean"] == pytest.approx(correct[flag].mean())
        assert rows.loc["False", "mean"] == pytest.approx(correct[~flag].mean())
        diff = summary["difference"][name]["accuracy"]["mean"]
        assert diff == pytest.approx(correct[~flag].mean() - correct[flag].mean())


def test_counterfactual_csv_equals_the_public_function(run):
    finished = sklens.open_run(run)
    made, note = counterfactual_pairs(finished.config, finished.task, "last_digit_decides")
    assert len(made) == 6 and all(a.meta["operation"] == "multiplication" for a, _ in made)
    again = sklens.counterfactual(
        finished.model, finished.prompt, made, finished.neurons, n_random=3, progress=False
    )
    saved = pd.read_csv(run / "counterfactual_last_digit_decides.csv")
    for column in ("d_act", "d_std", "p", "p_vs_random"):
        np.testing.assert_allclose(saved[column], again.units[column], rtol=1e-6)
    summary = json.loads((run / "summary.json").read_text())["counterfactual"]
    assert summary["last_digit_decides"]["used"] == 6 == note["used"]
    assert "choice_changed" in summary["last_digit_decides"]["behaviour"]


def test_no_score_choices_measures_the_loss_only(run):
    causal = pd.read_csv(run / "causal.csv")
    assert causal.filter(like="accuracy").isna().all().all()
    assert causal.d_loss.notna().all() and "d_accuracy" in causal


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--behaviour-by", "colour"), "--behaviour-by: 32 example(s) (first: 0) have no meta"),
        (
            ("--behaviour-by", "last_digit_decides", "--behaviour-where", "operation=modulo"),
            "--behaviour-where operation=modulo keeps none of the 32 selection and confirmation",
        ),
        (("--behaviour-where", "operation=addition"), "--behaviour-where filters the examples"),
        (("--counterfactual", "hans_twin"), "--counterfactual hans_twin makes 0 pair(s)"),
        (("--counterfactual", "swap"), "--counterfactual has unknown 'swap'"),
    ],
)
def test_bad_followups_fail_before_any_work(
    qwen_dir, tmp_path, capsys, monkeypatch, extra, message
):
    forbid_work(monkeypatch, ("load_model", "train_soft_prompt", "scan"))
    assert main(_args(qwen_dir, tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err
