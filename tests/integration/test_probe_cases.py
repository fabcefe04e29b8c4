"""The reliability probe's late checks and data hazards (../shared/reviews/reliability.md, H, I, J):
each bad setting is refused before training, in the syntax the user typed, and data hazards
are removed or named. Every test reproduces the probe's case."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import sklens
from sklens.app import tasks
from sklens.app.cli import main
from tests.helpers import forbid_work, probe_args, write_probe_task


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error was printed"
    return " ".join(err[-1].split())


@pytest.fixture
def task_file(tmp_path):
    return write_probe_task(tmp_path / "task.jsonl")


@pytest.mark.parametrize(
    ("site", "says"),
    [
        ("blocks.{layer}.hook_nonexistent", "the model has no hook 'blocks.0.hook_nonexistent'"),
        ("blocks.{layer}.attn.hook_pattern", "no value per position to scan"),
        ("blocks.7.hook_resid_post", "no hook 'blocks.7.hook_resid_post': it has 2 layers"),
    ],
)
def test_case_H2_H3_H4_a_site_the_model_lacks_fails_before_training(
    qwen_dir, task_file, tmp_path, capsys, monkeypatch, site, says
):
    forbid_work(monkeypatch, ("train_soft_prompt",))
    args = probe_args(qwen_dir, task_file, tmp_path / "o", "--metric", "label:big", "--site", site)
    assert main(args) == 2
    assert says in _error(capsys)


def test_case_H5_an_sae_of_another_width_or_layer_fails_before_training(
    qwen_dir, task_file, tmp_path, capsys, monkeypatch
):
    sae_lens = pytest.importorskip("sae_lens", reason="SAELens pins TransformerLens 3")
    forbid_work(monkeypatch, ("train_soft_prompt",))
    for d_in, layer, says in [(32, 0, "takes inputs of width 32"), (64, 5, "reads layer 5")]:
        cfg = sae_lens.StandardSAEConfig(d_in=d_in, d_sae=16)
        cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
        folder = tmp_path / f"sae-{d_in}-{layer}"
        sae_lens.StandardSAE(cfg).save_model(str(folder))
        out = tmp_path / f"o{d_in}"
        assert main(probe_args(qwen_dir, task_file, out, "--metric", "label:big",
                               "--site", f"sae:{folder}")) == 2  # fmt: skip
        assert says in _error(capsys)


def test_case_H8_steering_without_a_factor_is_refused_at_once(
    qwen_dir, task_file, tmp_path, capsys
):
    assert main(probe_args(qwen_dir, task_file, tmp_path / "o", "--steering", ",,")) == 2
    assert "--steering must be numbers separated by commas" in _error(capsys)


def test_case_H14_choice_confidence_without_choices_fails_before_training(
    qwen_dir, task_file, tmp_path, capsys, monkeypatch
):
    forbid_work(monkeypatch, ("load_model", "train_soft_prompt"))
    assert (
        main(probe_args(qwen_dir, task_file, tmp_path / "o", "--metric", "choice_confidence")) == 2
    )
    assert "choice_confidence needs multiple-choice examples" in _error(capsys)


def test_case_H15_grouping_by_the_labels_own_field_fails_before_training(
    qwen_dir, tmp_path, capsys, monkeypatch
):
    forbid_work(monkeypatch, ("load_model", "train_soft_prompt"))
    args = probe_args(qwen_dir, "hans", tmp_path / "o", "--permutations", "9",
                      "--permutation-groups", "heuristic")  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "is constant within every group of 'heuristic'" in err
    assert "--permutation-groups" in err


def test_case_H16_a_label_constant_on_the_confirmation_split_is_named(qwen_dir, tmp_path):
    """The probe: 2 positives in the selection split, none in the confirmation split; the check
    used to look at the selection split only and fail after training and the scan."""
    from sklens import validate
    from sklens.app.config import ConfirmConfig, ScanConfig, StudyConfig
    from sklens.app.data_checks import study_data

    def example(i, decides):
        return sklens.Example(f"What is {i} times 3?", f" {3 * i}", {"decides": decides})

    val = [example(i, i < 2) for i in range(16)]
    confirm = [example(100 + i, False) for i in range(8)]
    task = tasks.TaskData("arithmetic", [], val, None, confirm=confirm)
    label = ScanConfig(metric="label:decides=true")
    config = StudyConfig(scan=label, confirm=ConfirmConfig(n_confirm=8))
    with validate.spelled_as_flags(), pytest.raises(ValueError) as info:
        study_data(config, task)
    err = str(info.value)
    assert "is 0.0 for every confirmation example (8)" in err
    assert "raise --n-confirm or skip the confirmation (--n-confirm 0)" in err
    study_data(StudyConfig(scan=label, confirm=ConfirmConfig(n_confirm=0)),
               tasks.TaskData("arithmetic", [], val, None))  # fmt: skip


def test_case_H17_the_suggested_label_value_can_match(qwen_dir, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch, ("load_model", "train_soft_prompt"))
    args = ["run", "--quiet", "--model", str(qwen_dir), "--metric", "label:last_digit_unique",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    err = _error(capsys)
    assert "holds None, not a number" in err and "=None" not in err
    suggested = err.split("e.g. --metric ")[1].split()[0].rstrip(";,")
    key, value = suggested.removeprefix("label:").split("=")
    pool = sklens.data.bigbench_arithmetic()
    assert any(str(e.meta[key]) == value for e in pool)  # following the advice can work


def test_case_I9_a_too_long_example_is_quoted(qwen_dir, tmp_path, capsys):
    task = tmp_path / "long.jsonl"
    lines = [{"instruction": f"Question {i}: {'word ' * (3000 if i == 13 else 3)}",
              "completion": " x", "big": i % 2 == 0} for i in range(60)]  # fmt: skip
    task.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(probe_args(qwen_dir, task, tmp_path / "o", "--metric", "label:big")) == 2
    err = _error(capsys)
    assert "'Question 13: word word" in err and "n_ctx" in err


def test_case_I11_repeated_examples_are_used_once_and_counted(tmp_path, caplog):
    task = tmp_path / "dup.jsonl"
    lines = [{"instruction": f"What is {i} plus 1?", "completion": f" {i + 1}", "big": i > 20}
             for i in range(40)]  # fmt: skip
    task.write_text("\n".join(json.dumps(x) for x in lines * 2) + "\n")
    import logging

    logger = logging.getLogger("sklens")  # the command line stops it propagating to the root
    logger.addHandler(caplog.handler)
    try:
        data = tasks.load_task(str(task), n_train=16, n_val=16, seed=0, n_confirm=8)
    finally:
        logger.removeHandler(caplog.handler)
    assert "40 repeated examples" in caplog.text and "leaving 40" in caplog.text
    seen = [(e.instruction, e.completion) for e in data.train + data.val + data.confirm]
    assert len(seen) == len(set(seen)) == 40  # no example in two splits, none twice in one


@pytest.mark.parametrize("task", ["hans", "skillmix"])
def test_case_J9_growing_a_later_split_keeps_the_earlier_ones(task):
    base = tasks.load_task(task, n_train=24, n_val=16, seed=0, n_confirm=8)
    grown = tasks.load_task(task, n_train=24, n_val=16, seed=0, n_confirm=12, n_causal=20)
    assert grown.train == base.train and grown.val == base.val
    assert grown.confirm[:8] == base.confirm


def test_a_dataframe_with_carriage_returns_survives_examples_csv(tmp_path):
    from sklens.atomic import write_csv

    write_csv(pd.DataFrame({"instruction": ["a\rb"]}), tmp_path / "x.csv")
    assert pd.read_csv(tmp_path / "x.csv").instruction.tolist() == ["a\rb"]


def test_generated_hans_pairs_are_distinct_so_the_default_splits_fit():
    """The templates make a pair twice now and then (3 in 600 before): repeats are used once, so
    the generator skips them and still gives ``n``, and the default study's splits fit."""
    pairs = sklens.data.generate_hans(1200, seed=0)
    assert len({(e.instruction, e.completion) for e in pairs}) == 1200
    data = tasks.load_task("hans", n_train=240, n_val=160, seed=0, n_confirm=80, n_causal=48)
    assert len(data.train) + len(data.val) + len(data.confirm) + len(data.causal) == 528
