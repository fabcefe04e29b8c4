"""Bad settings fail at once, naming the setting as the user wrote it and what it accepts.

The cases are those of the reliability probe of issue 12 (its case numbers are in the test names):
each runs the probe's command and checks the message and that no work was done (nothing was
loaded or trained), not how long it took.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sklens
from sklens.app.cli import main
from sklens.scanning import metrics
from tests.helpers import (
    ROOT,
    count_optimizer_steps,
    forbid_work,
    probe_args,
    without_type_checks,
    write_probe_task,
)


@pytest.fixture
def task_file(tmp_path):
    return write_probe_task(tmp_path / "task.jsonl")


@pytest.fixture
def no_work(monkeypatch):
    forbid_work(monkeypatch)


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("54", ["--top-k", "0"], "--top-k must be at least 1 (how many top neurons to report)"),
        ("55", ["--top-k", "-1"], "--top-k must be at least 1 (how many top neurons to report)"),
        ("58", ["--n-extremal", "0"], "--n-extremal must be at least 1"),
        ("59", ["--n-extremal", "-1"], "--n-extremal must be at least 1"),
        ("61", ["--seeds", "a,b"], "--seeds must be two or more different whole numbers"),
        ("62", ["--n-confirm", "2"], "--n-confirm 2 is too few to confirm on (at least 4)"),
        ("62", ["--n-confirm", "-1"], "--n-confirm must be at least 0"),
        ("-", ["--n-plateau", "0"], "--n-plateau 0 must hold out between 1 and --n-train"),
        ("-", ["--patience", "-1"], "--patience must be at least 0"),
        ("-", ["--eval-every", "0"], "--eval-every must be at least 1"),
        ("-", ["--n-confirm", "0", "--measures", "spearman"], "pass --n-confirm > 0"),
        ("65", ["--device", "tpu"], "--device 'tpu' is not a device sklens can use; use cpu, cuda"),
        ("66", ["--data", "nothere.txt", "--metric", "loss"], "--data is only read by the hans"),
        ("50", ["--metric", "label:=1"], "--metric 'label:=1' names no meta field; use label:KEY"),
        ("60", ["--reduce", "mean"], "--reduce must be one of max, absmax; got 'mean'"),
        ("60", ["--permutations", "-5"], "--permutations must be at least 0"),
        ("60", ["--ablate", "--ablate-modes", "explode"], "--ablate-modes has unknown 'explode'"),
        ("57", ["--n-val", "2"], "--n-val must be at least 3"),
        ("53", ["--lr", "inf"], "--lr must be a finite number above 0, got inf"),
        ("52", ["--batch-size", "0"], "--batch-size must be at least 1"),
        ("-", ["--measures", "spearman,bogus"], "--measures has unknown 'bogus'"),
        ("-", ["--mi-bins", "1"], "--mi-bins must be 0 (no mutual information) or 2..16"),
        ("-", ["--mi-bins", "-2"], "--mi-bins must be at least 0"),
        ("-", ["--mi-bins", "4", "--n-val", "6"], "use fewer bins, e.g. --mi-bins 3"),
        ("-", ["--mi-bins", "4", "--permutation-groups", "op"], "drop one of them"),
    ],
)
def test_bad_flag_fails_before_any_work(case, extra, message, task_file, tmp_path, capsys, no_work):
    assert main(probe_args("unused", task_file, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("sklens: error: ") and message in err and err.count("\n") == 1


def test_messages_give_the_accepted_values(task_file, tmp_path, capsys, no_work):
    for extra, accepted in (
        (["--ablate-modes", "explode"], "zero, mean, resample, noise, scale, shift"),
        (["--metric", "label:=1"], "label:KEY=VALUE, e.g. --metric label:skill=spatial"),
        (["--seeds", "a,b"], "e.g. --seeds 0,1,2"),
        (["--device", "tpu"], "use cpu, cuda or cuda:N"),
        (["--n-plateau", "500"], "or pass --patience 0 to train all --steps"),
    ):
        assert main(probe_args("unused", task_file, tmp_path / "out", *extra)) == 2
        assert accepted in capsys.readouterr().err


def test_case_64_cuda_without_a_gpu_names_the_cpu_fix(task_file, tmp_path, capsys, no_work):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(probe_args("unused", task_file, tmp_path / "o", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "--device cuda:" in err and "use --device cpu" in err


def test_bad_flag_is_refused_without_importing_torch(task_file, tmp_path):
    # what makes it fast: the check runs before torch or TransformerLens is imported
    code = (
        "import sys; from sklens.app.cli import main; "
        f"rc = main({probe_args('unused', task_file, tmp_path / 'o', '--top-k', '-1')!r}); "
        "print(rc, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "--top-k must be at least 1" in done.stderr


@pytest.fixture
def no_model(monkeypatch):
    forbid_work(monkeypatch, ("load_model",))


def test_case_49_missing_meta_field_is_found_before_the_model_loads(
    task_file, tmp_path, capsys, no_model
):
    args = probe_args("unused", task_file, tmp_path / "o", "--metric", "label:nonexistent")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--metric label:nonexistent: validation example 0" in err
    assert "has no meta field 'nonexistent'; the examples have ['big', 'digits', 'op']" in err


def test_case_51_string_field_suggests_the_cli_syntax(task_file, tmp_path, capsys, no_model):
    assert main(probe_args("unused", task_file, tmp_path / "o", "--metric", "label:op")) == 2
    err = capsys.readouterr().err
    assert "meta field 'op' holds" in err and "e.g. --metric label:op=" in err
    assert "positive=" not in err  # the Python spelling is for Python callers


def test_case_51_from_python_suggests_the_python_syntax(task_file, tmp_path, no_model):
    config = sklens.StudyConfig(
        task=str(task_file),
        n_train=24,
        n_val=16,
        train=sklens.TrainConfig(n_plateau=4),
        scan=sklens.ScanConfig(metric="label:op"),
        confirm=sklens.ConfirmConfig(n_confirm=8),
    )
    with pytest.raises(ValueError, match=r"e\.g\. metric='label:op=(minus|plus)'"):
        sklens.run_study(config, tmp_path / "o")


def test_value_that_never_occurs_lists_the_values(task_file, tmp_path, capsys, no_model):
    assert main(probe_args("unused", task_file, tmp_path / "o", "--metric", "label:op=Minus")) == 2
    err = capsys.readouterr().err
    assert "--metric label:op=Minus is 0.0 for every validation example" in err
    assert "['minus', 'plus']" in err


def test_group_measures_need_a_task_with_groups(task_file, tmp_path, capsys, no_model):
    args = probe_args("unused", task_file, tmp_path / "o", "--measures", "eta_squared")
    assert main([*args, "--metric", "label:big"]) == 2
    assert "--measures eta_squared compare groups, but task" in capsys.readouterr().err


def test_api_names_python_arguments():
    """A config checks itself as it is made, naming Python's arguments and syntax."""
    with pytest.raises(ValueError, match=r"^top_k must be at least 1"):
        sklens.SelectConfig(top_k=-1)
    with pytest.raises(ValueError, match=r"^seeds must be two or more .* e\.g\. seeds=\(0, 1, 2\)"):
        sklens.ConfirmConfig(seeds=(0,))
    with without_type_checks():  # as a user calls it: the suite's beartype would refuse first
        with pytest.raises(
            TypeError, match=r"^seeds must be a tuple, e\.g\. seeds=\(0, 1, 2\); got '0,1'"
        ):
            sklens.ConfirmConfig(seeds="0,1")
        with pytest.raises(TypeError, match=r"^train must be a sklens\.TrainConfig"):
            sklens.StudyConfig(train=sklens.ScanConfig())
        with pytest.raises(TypeError, match=r"^config must be a sklens\.StudyConfig, got dict"):
            sklens.run_study({"steps": 3}, "unused")


# --- the Python API (probe cases 10, 16, 22, 23, 24, 27) ---


def test_case_10_metric_values_that_are_not_numbers(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2)
    values = np.array([str(i) if i != 5 else "a" for i in range(len(examples))])
    with pytest.raises(
        TypeError, match="metric 'values' must be one number per example: value 5 is 'a'"
    ):
        sklens.scan(qwen, prompt, examples, values, progress=False)

    def parity(example):
        return "x"

    with pytest.raises(TypeError, match=r"metric 'parity' returned 'x' \(str\) for example 0"):
        sklens.scan(qwen, prompt, examples, parity, progress=False)


def test_case_16_fractional_n_slots(qwen, examples):
    # unwrapped: under pytest, jaxtyping would refuse the float before sklens sees it (users
    # run without that check)
    train = inspect.unwrap(sklens.train_soft_prompt)
    with pytest.raises(TypeError, match="n_slots must be a whole number .* got 2.5"):
        train(qwen, examples, n_slots=2.5, steps=1, progress=False)


@pytest.fixture
def count_steps(monkeypatch):
    return count_optimizer_steps(monkeypatch)


def test_case_22_checkpoint_every_zero_fails_before_training(qwen, examples, tmp_path, count_steps):
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        sklens.train_soft_prompt(
            qwen, examples, steps=2, checkpoint_dir=tmp_path, checkpoint_every=0, progress=False
        )
    assert count_steps["n"] == 0


def test_case_23_unknown_init_lists_the_modes(qwen, examples, count_steps):
    with pytest.raises(
        ValueError, match="init must be one of 'random', 'text', 'sample_vocab', got 'bogus'"
    ):
        sklens.train_soft_prompt(qwen, examples, steps=2, init="bogus", progress=False)
    assert count_steps["n"] == 0


def test_case_24_negative_top_k(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2)
    result = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    with pytest.raises(ValueError, match="k must be at least 0 .* got -1"):
        result.top_k(-1)
    assert result.top_k(0).empty and len(result.top_k(10**6)) == 2 * qwen.cfg.d_mlp


def test_case_27_scan_batch_size_zero(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        sklens.scan(qwen, prompt, examples, metrics.label("a"), batch_size=0, progress=False)


def test_lr_must_be_finite(qwen, examples, count_steps):
    for lr in (float("inf"), float("nan"), -1e-3):
        with pytest.raises(ValueError, match="lr must be a finite number above 0"):
            sklens.train_soft_prompt(qwen, examples, steps=1, lr=lr, progress=False)
    assert count_steps["n"] == 0
