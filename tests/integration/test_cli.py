"""The sklens command end to end on a tiny model and generated data: outputs, resume, atomicity."""

from __future__ import annotations

import html
import json
import shutil
import subprocess

import pandas as pd
import pytest
import torch

import sklens
from sklens.app import causal_stage, rundir, study
from sklens.app.cli import main
from tests.helpers import count_optimizer_steps, study_args


def _no_partial_files(out):
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_run_writes_every_output(qwen_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    printed = capsys.readouterr().out
    assert " unit slot " in printed and "held-out r [95% CI]" in printed
    assert "score: in-sample, on the 12 selection examples" in printed
    assert "held-out r: the 8 confirmation examples" in printed
    for where in (f"sklens report {out}", f"sklens explain {out}", f"{out}/heldout.csv"):
        assert where in printed
    neurons = pd.read_csv(out / "neurons.csv")
    held = pd.read_csv(out / "heldout.csv")
    lines = printed.splitlines()
    for j, row in enumerate(neurons.itertuples()):  # each unit's held-out r beside its score
        h = held[(held.layer == row.layer) & (held.unit == row.unit) & (held.slot == row.slot)]
        (line,) = [x for x in lines if x.startswith(f"{j:>2} ")]
        shown = line.split()[4:8]  # after "#", "L0 N107" and the slot: score, held-out r, CI
        assert shown[:2] == [f"{row.score:.3f}", f"{h.r_heldout.item():.3f}"]
        assert " ".join(shown[2:]) == f"[{h.r_lo.item():.2f}, {h.r_hi.item():.2f}]"
    assert (
        list(neurons.columns[:5]) == ["layer", "unit", "slot", "corr", "score"]
        and len(neurons) == 3
    )
    examples = pd.read_csv(out / "examples.csv")
    assert len(examples) == 3 * 2 * 2 and set(examples.direction) == {"most", "least"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "label:skill=spatial" and summary["data"]["n_val"] == 12
    assert {"sklens", "torch", "transformer-lens", "transformers"} <= set(summary["versions"])
    assert set(summary["timings_s"]) == {
        "data",
        "load_model",
        "train",
        "scan",
        "examples",
        "confirm",
        "explain",
    }
    assert (out / "heldout.csv").exists() and summary["held_out"]["n_heldout"] == 8
    scan = sklens.Scan.load(out / "scan.safetensors")
    top = scan.top_k(3)
    assert list(top.unit) == list(neurons.unit)
    prompt = sklens.SoftPrompt.load(out / "prompt")
    assert prompt.config.training["steps"] == 3
    assert _no_partial_files(out)


def test_killed_run_resumes_without_corruption(qwen_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "scan", killed)
    with pytest.raises(KeyboardInterrupt):
        main(study_args(qwen_dir, out))
    staging = rundir.staging_dir(out)  # the killed run's work waits there; out is untouched
    assert not out.exists() and (staging / "checkpoint" / "checkpoint.pt").exists()
    assert not (staging / "scan.safetensors").exists()
    assert _no_partial_files(staging)
    trained = sklens.SoftPrompt.load(staging / "prompt")
    monkeypatch.undo()

    steps = count_optimizer_steps(monkeypatch)
    assert main(study_args(qwen_dir, out, "--resume")) == 0
    assert steps["n"] == 0  # training was finished: not one optimizer step is redone
    assert sklens.SoftPrompt.load(out / "prompt").embedding.equal(trained.embedding)
    stamp = (out / "scan.safetensors").stat().st_mtime_ns
    assert main(study_args(qwen_dir, out, "--resume")) == 0
    assert (out / "scan.safetensors").stat().st_mtime_ns == stamp  # the finished scan is reused
    assert main(study_args(qwen_dir, out, "--resume", "--metric", "label:skill=metaphor")) == 0
    assert (out / "scan.safetensors").stat().st_mtime_ns != stamp  # ... unless its settings changed
    assert _no_partial_files(out) and not staging.exists()


def test_jsonl_task_and_errors(qwen_dir, tmp_path, capsys):
    task = tmp_path / "task.jsonl"
    lines = [
        {
            "instruction": f"Is {i} even?",
            "completion": "yes" if i % 2 == 0 else "no",
            "even": i % 2 == 0,
        }
        for i in range(40)
    ]
    task.write_text("\n".join(json.dumps(line) for line in lines))
    args = study_args(qwen_dir, tmp_path / "j")
    args[args.index("skillmix")] = str(task)
    assert main(args) == 2
    assert "has no default metric: pass --metric" in capsys.readouterr().err
    assert main([*args, "--metric", "label:even=true"]) == 0
    assert main([*args, "--metric", "accuracy"]) == 2
    assert "unknown metric 'accuracy'" in capsys.readouterr().err
    bad = study_args(qwen_dir, tmp_path / "b")
    bad[bad.index("skillmix")] = "translation"
    assert main(bad) == 2
    assert "unknown task 'translation'" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("sklens")
    assert exe, "the sklens console script is not on PATH: pip install -e ."
    result = subprocess.run([exe, "run", "--help"], capture_output=True, text=True, check=True)
    assert "--metric" in result.stdout and "label:KEY=VALUE" in result.stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"sklens {sklens.__version__}"


def test_every_flag_and_command_has_a_help_sentence():
    """Help strings are sentences: no field names echoed back, no empty or doubled defaults,
    and every subcommand says what it does (the ecosystem review's list)."""
    from sklens.app.cli import _parser

    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"run", "report", "explain", "fetch"}
    for name, sub in commands.items():
        assert sub.description and sub.description.endswith("."), name
        for action in sub._actions:
            if action.dest == "help":
                continue
            text = action.help or ""
            assert text[:1].isupper() and text.rstrip().endswith("."), (name, action.dest, text)
            assert "(default:" not in text and "Default: ." not in text, (name, action.dest)
            assert text.count("Default:") <= 1, (name, action.dest)
            assert text.lower().rstrip(".") != action.dest.replace("_", " "), (name, action.dest)
    run_help = commands["run"].format_help()
    for sloppy in ("top k", " lr ", "n random", "(default: None)", "(default: )"):
        assert sloppy not in run_help


def test_run_with_ablate_writes_the_causal_check(qwen_dir, tmp_path, monkeypatch):
    """The causal check runs on the third split — disjoint from the examples that selected the
    neurons and from the training ones (science review #9) — and ``--no-match-scale`` reaches it
    (#10)."""
    seen = {}
    real = causal_stage.causal_check

    def spy(model, prompt, examples, neurons, **kwargs):
        seen.update(examples=list(examples), match_scale=kwargs["match_scale"])
        return real(model, prompt, examples, neurons, **kwargs)

    real_task = study.study_task

    def keep_task(config):
        seen["task"] = real_task(config)
        return seen["task"]

    monkeypatch.setattr(causal_stage, "causal_check", spy)
    monkeypatch.setattr(study, "study_task", keep_task)
    out = tmp_path / "abl"
    args = ("--ablate", "--n-random", "2", "--n-causal", "6", "--ablate-modes", "zero")
    assert main(study_args(qwen_dir, out, *args, "--no-match-scale")) == 0
    task = seen["task"]
    texts = {e.instruction for e in seen["examples"]}
    assert seen["examples"] == list(task.causal) and len(texts) == 6
    assert not texts & {e.instruction for e in (*task.val, *task.confirm, *task.train)}
    assert seen["match_scale"] is False
    causal = pd.read_csv(out / "causal.csv")
    assert set(causal.set) == {"selected", "positive", "random_0", "random_1"}
    assert not causal.match_scale.any()
    assert set(causal.group) == {"all", "skill=spatial", "skill=metaphor"} & set(causal.group) | {
        "all"
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["causal"][0]["mode"] == "zero" and "p_loss" in summary["causal"][0]
    assert summary["causal"][0]["mde_loss"] == float("inf")  # 2 random sets cannot reach 0.05
    assert "causal" in summary["timings_s"]


def test_causal_controls_of_a_study(qwen_dir, tmp_path, monkeypatch):
    """The positive control is the attribution's top-K when it ran; random units come from the
    selected units' deciles of |score| in this run's scan; the dose-response compares the
    correlation and attribution rankings and is written beside the check."""
    from sklens.causal.controls import score_strata

    seen = {}
    real = causal_stage.causal_check

    def spy(model, prompt, examples, neurons, **kwargs):
        seen.update(kwargs)
        return real(model, prompt, examples, neurons, **kwargs)

    monkeypatch.setattr(causal_stage, "causal_check", spy)
    out = tmp_path / "controls"
    args = ("--ablate", "--attribute", "--n-random", "19", "--n-causal", "6")
    assert (
        main(study_args(qwen_dir, out, *args, "--ablate-modes", "zero", "--dose-response", "1,2"))
        == 0
    )
    attribution = pd.read_csv(out / "attribution.csv")
    assert seen["positive"][["layer", "unit", "slot"]].equals(
        attribution[["layer", "unit", "slot"]]
    )
    scan = sklens.Scan.load(out / "scan.safetensors")
    strata = score_strata(scan)
    assert all(torch.equal(seen["strata"][k], strata[k]) for k in strata)
    summary = json.loads((out / "summary.json").read_text())
    zero = summary["causal"][0]
    assert zero["n_random"] == 19 and zero["positive_n_neurons"] == len(attribution)
    assert zero["bound_loss"] == max(abs(zero["excess_lo_loss"]), abs(zero["excess_hi_loss"]))
    dose = pd.read_csv(out / "dose_response.csv")
    assert set(dose.ranking) == {"correlation", "attribution"} and set(dose.k) == {1, 2}
    from sklens.app.report import build_report
    from sklens.app.verdict import causal_sentence

    page = build_report(out).read_text()
    assert html.escape(causal_sentence(zero)) in page
    assert "Dose-response: the top-k ablated for each k" in page
    causal_html = page.split("Causal check on a third split")[1].split("Dose-response")[0]
    assert "random_0" not in causal_html and "positive" in causal_html  # no 19 random rows


def test_default_training_runs_to_a_plateau_of_at_most_150_steps(qwen_dir, tmp_path, monkeypatch):
    """Science review #13: by default the prompt trains up to 150 steps and stops on a plateau
    of a 32-question slice (evaluated every 10 steps, patience 2), not for a fixed 30 steps; the
    CLI hands exactly that to the training."""
    config = sklens.StudyConfig()
    train = config.train
    assert (train.steps, train.eval_every, train.patience, train.n_plateau) == (150, 10, 2, 32)
    seen = {}
    real = study.train_soft_prompt

    def spy(model, fit, **kwargs):
        seen.update(kwargs, n_fit=len(fit))
        return real(model, fit, **{**kwargs, "steps": 2})  # the settings seen; a short run

    monkeypatch.setattr(study, "train_soft_prompt", spy)
    args = study_args(qwen_dir, tmp_path / "run")
    for flag in ("--steps", "--eval-every"):  # back to their defaults
        i = args.index(flag)
        del args[i : i + 2]
    assert main(args) == 0
    assert (seen["steps"], seen["eval_every"], seen["patience"]) == (150, 10, 2)
    assert len(seen["val_examples"]) == 4 and seen["n_fit"] == 16 - 4  # --n-plateau 4 here


def test_run_with_statistics(qwen_dir, tmp_path):
    out = tmp_path / "stats"
    args = study_args(
        qwen_dir,
        out,
        "--permutations",
        "19",
        "--seeds",
        "0,1",
        "--measures",
        "spearman,auroc,eta_squared",
        "--mi-bins",
        "3",
    )
    args[args.index("--n-val") + 1] = "16"
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["significance"]["n_permutations"] == 19
    assert {"n_fwer_0.05", "n_fdr_bh_0.05", "n_fdr_by_0.05"} <= set(summary["significance"])
    assert summary["held_out"]["n_select"] == 16 and summary["held_out"]["n_heldout"] == 8
    assert summary["splits"] == {
        **summary["splits"],
        "train": 12,
        "plateau": 4,
        "select": 16,
        "confirm": 8,
        "causal": 0,
    }
    assert set(summary["stability"]) == {"mean_jaccard", "mean_rank_corr"}
    heldout = pd.read_csv(out / "heldout.csv")
    assert {"spearman", "auroc", "eta_squared", "r_lo_adj", "r_hi_adj"} <= set(heldout.columns)
    assert (heldout.r_lo_adj <= heldout.r_lo).all() and (heldout.r_hi <= heldout.r_hi_adj).all()
    neurons = pd.read_csv(out / "neurons.csv")
    assert {"p_fwer", "p_unit", "q_bh"} <= set(neurons.columns)
    for name in ("heldout.csv", "consensus.csv", "stability_jaccard.csv"):
        assert (out / name).exists()
    # the mutual-information ranking: the saved scan's, beside the Pearson top-K
    mi = sklens.Scan.load(out / "scan.safetensors").mutual_info
    by_mi = pd.read_csv(out / "neurons_mi.csv")
    expected = mi.top_k(len(neurons))
    assert by_mi[["layer", "unit", "slot"]].equals(expected[["layer", "unit", "slot"]])
    pearson = set(zip(neurons.layer, neurons.unit, strict=True))
    shared = [unit in pearson for unit in zip(by_mi.layer, by_mi.unit, strict=True)]
    assert by_mi.in_pearson_top.tolist() == shared
    assert summary["mutual_information"]["shared_with_pearson"] == sum(shared)
    assert summary["mutual_information"]["n_permutations"] == 19
    assert summary["mutual_information"]["n_fwer_0.05_mi"] == int((mi.p_values() <= 0.05).sum())


def test_bad_values_fail_before_anything_is_written(qwen_dir, tmp_path, capsys):
    """#59 (--n-extremal -1 was accepted) and #53 (--lr inf trained a NaN prompt)."""
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out, "--n-extremal", "-1")) == 2
    assert "--n-extremal must be at least 1" in capsys.readouterr().err
    assert main(study_args(qwen_dir, out, "--lr", "inf")) == 2
    assert "--lr must be a finite number above 0, got inf" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_meta_fields_named_like_sklens_columns_are_kept_apart(qwen_dir, tmp_path):
    """#69: meta fields named like examples.csv's own columns (then position, now slot;
    activation; rank) overwrote them."""
    task = tmp_path / "task.jsonl"
    rows = [
        {
            "instruction": f"The cup is {side} of the box. What is {i} plus 3?",
            "completion": str(i + 3),
            "slot": side,
            "activation": 1.0,
            "rank": 7,
            "big": i > 15,
        }
        for i, side in zip(range(40), ["left", "right"] * 20, strict=True)
    ]
    task.write_text("\n".join(json.dumps(r) for r in rows))
    args = study_args(qwen_dir, tmp_path / "run", "--metric", "label:big")
    args[args.index("skillmix")] = str(task)
    assert main(args) == 0
    examples = pd.read_csv(tmp_path / "run" / "examples.csv")
    assert {"meta.slot", "meta.activation", "meta.rank"} <= set(examples.columns)
    assert set(examples.slot) <= {0, 1, 2} and set(examples["rank"]) == {0, 1}
    assert examples.activation.nunique() > 1
