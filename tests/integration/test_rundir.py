"""Run directories: resume reuses only matching work, failed runs change nothing, one writer at
a time, and report refuses a directory that mixes runs (the probe's #83-#92, #97)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import sklens
from sklens.app import cpu_ledger, rundir
from sklens.app.cli import main
from sklens.app.report import build_report
from tests.helpers import ROOT, count_optimizer_steps, study_args


def _hashes(out: Path) -> dict[str, str]:
    return rundir.file_hashes(out)


class _Steps:
    """Counts optimizer steps, to show what a resumed run recomputed."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = torch.optim.AdamW.step

        def step(opt, *args, **kwargs):
            self.n += 1
            return real(opt, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_resume_recomputes_what_another_model_or_prompt_length_changes(
    qwen_dir, llama_dir, tmp_path, monkeypatch
):
    """#88: --resume --model LLAMA reused qwen2's prompt and scan; #86: --n-slots crashed."""
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    qwen_scan = sklens.Scan.load(out / "scan.safetensors")
    steps = _Steps(monkeypatch)
    assert main(study_args(qwen_dir, out, "--resume", "--top-k", "2")) == 0
    assert steps.n == 0  # a setting after the scan: training and scan are reused
    assert len(pd.read_csv(out / "neurons.csv")) == 2

    assert main(study_args(llama_dir, out, "--resume")) == 0
    assert steps.n == 3  # retrained for the other model
    llama_name = sklens.load_model(llama_dir, device="cpu").cfg.model_name
    assert sklens.SoftPrompt.load(out / "prompt").config.training["model"] == llama_name
    scan = sklens.Scan.load(out / "scan.safetensors")
    assert scan.settings.model_name == llama_name != qwen_scan.settings.model_name
    assert json.loads((out / "summary.json").read_text())["model"]["name"] == llama_name

    assert main(study_args(llama_dir, out, "--resume", "--n-slots", "4")) == 0
    assert sklens.SoftPrompt.load(out / "prompt").n_slots == 4
    assert sklens.Scan.load(out / "scan.safetensors").settings.n_slots == 4
    assert rundir.mismatched_files(out) == []


def test_a_failed_rerun_leaves_the_previous_results_intact(qwen_dir, tmp_path, monkeypatch):
    """#89: a re-run that failed after training left its prompt beside the old scan."""
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    before = _hashes(out)

    def failing(*args, **kwargs):  # a failure after training (bad settings fail before it)
        raise RuntimeError("the scan failed")

    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="the scan failed"):
        m.setattr(sklens.app.study, "scan", failing)
        main(study_args(qwen_dir, out, "--seed", "1"))
    assert _hashes(out) == before
    steps = _Steps(monkeypatch)  # the failed run's training waits in staging for --resume
    assert main(study_args(qwen_dir, out, "--seed", "1", "--resume")) == 0
    assert steps.n == 0 and json.loads((out / "summary.json").read_text())["config"]["seed"] == 1
    assert not rundir.staging_dir(out).exists()


def test_report_refuses_a_directory_that_mixes_runs(qwen_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(study_args(qwen_dir, a)) == 0
    assert main(study_args(qwen_dir, b, "--seed", "1")) == 0
    shutil.rmtree(a / "prompt")
    shutil.copytree(b / "prompt", a / "prompt")  # seed 1's prompt beside seed 0's scan
    with pytest.raises(rundir.RunDirError, match=r"mixes files .*prompt/soft_prompt.json"):
        build_report(a)
    (b / rundir.MANIFEST).unlink()
    with pytest.raises(rundir.RunDirError, match="has no valid manifest.json"):
        build_report(b)


def test_resume_rescans_a_damaged_scan(qwen_dir, tmp_path, capsys):
    """#83, #84: a truncated or foreign scan.safetensors made every --resume fail; #85 through
    the CLI: a damaged checkpoint.pt of a finished run is retrained, with a warning naming it."""
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    corr = sklens.Scan.load(out / "scan.safetensors").corr
    prompt = (out / "prompt" / "soft_prompt.safetensors").read_bytes()
    for damage in (b"truncated", prompt):
        (out / "scan.safetensors").write_bytes(damage)
        capsys.readouterr()
        assert main(study_args(qwen_dir, out, "--resume")) == 0
        assert "scan.safetensors in" in capsys.readouterr().err
        assert torch.equal(
            sklens.Scan.load(out / "scan.safetensors").corr.nan_to_num(), corr.nan_to_num()
        )
    checkpoint = next(out.rglob("checkpoint.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(study_args(qwen_dir, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"{checkpoint.relative_to(out)} in {out} changed since that run" in err
    assert (out / "prompt" / "soft_prompt.safetensors").read_bytes() == prompt


def test_a_full_disk_keeps_the_previous_results_and_the_finished_steps(
    qwen_dir, tmp_path, monkeypatch, capsys
):
    """#92: ENOSPC gave raw tracebacks (or 'basic_ios::clear: iostream error')."""
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    before = _hashes(out)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("sklens.scanning.result.write_bytes", full)
    assert main(study_args(qwen_dir, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "could not write the results (No space left on device" in err
    assert f"previous results in {out} are unchanged" in err and "--resume" in err
    assert _hashes(out) == before
    monkeypatch.undo()
    steps = _Steps(monkeypatch)
    assert main(study_args(qwen_dir, out, "--seed", "1", "--resume")) == 0
    assert steps.n == 0


def test_a_second_run_into_the_same_out_fails_at_once_naming_the_holder(qwen_dir, tmp_path, capsys):
    """#97: two runs into one --out both exited 0 and left a mixed directory."""
    out = tmp_path / "run"
    code = (
        "import sys, time; from sklens.app import study; from sklens.app.cli import main\n"
        "def train(*a, **k): print('training', flush=True); time.sleep(120)\n"
        "study.train_soft_prompt = train\n"
        f"main({study_args(qwen_dir, out)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "training"
        assert main(study_args(qwen_dir, out)) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by another sklens process (pid {holder.pid} on " in err
        assert "wait for it to finish, or pass another --out" in err
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases its lock
        holder.wait()
    assert main(study_args(qwen_dir, out)) == 0


def test_out_that_is_a_file_or_holds_other_files_is_refused(qwen_dir, tmp_path, capsys):
    """#90: --out naming a file gave a FileExistsError traceback; a run replaces the whole
    directory, so one holding the user's own files is refused rather than replaced."""
    (tmp_path / "file").write_text("x")
    assert main(study_args(qwen_dir, tmp_path / "file")) == 2
    assert "is a file, not a directory; pass a directory" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    assert main(study_args(qwen_dir, tmp_path / "mine")) == 2
    assert "holds files that sklens did not write (notes.md)" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.md").read_text() == "keep me"


def test_an_unwritable_out_fails_before_any_work(qwen_dir, tmp_path, monkeypatch, capsys):
    """#91: a read-only --out gave an OSError traceback (after training, for a new run)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(rundir.os, "open", read_only)
    monkeypatch.setattr(sklens.app.study, "load_model", None)  # would fail loudly if reached
    assert main(study_args(qwen_dir, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "cannot write in --out" in err and "(Read-only file system)" in err


def test_report_works_from_another_working_directory(qwen_dir, tmp_path, monkeypatch):
    """#82: summary.json kept a relative --task path, so report failed from elsewhere."""
    start = tmp_path / "project"
    start.mkdir()
    rows = [
        {
            "instruction": f"Is {i} even?",
            "completion": "yes" if i % 2 == 0 else "no",
            "even": i % 2 == 0,
        }
        for i in range(40)
    ]
    (start / "task.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.chdir(start)
    args = study_args(qwen_dir, "run", "--metric", "label:even=true")
    args[args.index("skillmix")] = "task.jsonl"
    assert main(args) == 0
    monkeypatch.chdir(tmp_path)
    assert build_report(start / "run").exists()


def test_case_K9_out_that_is_a_symlink_writes_where_it_points_every_time(qwen_dir, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "linkrun"
    link.symlink_to(target, target_is_directory=True)
    for _ in range(2):  # the second run used to fail on the link left behind by the first
        assert main(study_args(qwen_dir, link)) == 0
        assert link.is_symlink() and (target / "summary.json").exists()
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-lock"))
    assert left == ["linkrun", "real"]  # no .linkrun.sklens-old left behind


def test_out_dot_is_the_working_directory(qwen_dir, tmp_path, monkeypatch):
    """``--out .`` used to fail after all the work with "Device or resource busy"."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(study_args(qwen_dir, ".")) == 0
    assert (here / "summary.json").exists()
    assert main([*study_args(qwen_dir, "."), "--resume"]) == 0
    left = [p for p in tmp_path.glob(".*sklens*") if not p.name.endswith("-lock")]
    assert (here / "summary.json").exists() and not left


def test_case_I13_carriage_returns_in_task_text(qwen_dir, tmp_path, capsys):
    """Every result is written and read back: examples.csv parses, the table prints, the report
    shows each unit's examples (the probe saw an IndexError, an unreadable CSV, empty tables)."""
    task = tmp_path / "cr.jsonl"
    rows = [
        {"instruction": f"Line {i}\rWhere is it{'?' if i % 2 else ''}\r", "completion": " x",
         "skill": "spatial" if i % 2 else "metaphor"}
        for i in range(60)
    ]  # fmt: skip
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    args = study_args(qwen_dir, out)
    args[args.index("skillmix")] = str(task)
    assert main([*args, "--report", "--metric", "label:skill=spatial"]) == 0
    examples = pd.read_csv(out / "examples.csv")
    assert len(examples) == 3 * 2 * 2 and examples.instruction.str.contains("\r").all()
    assert "\r" not in capsys.readouterr().out.replace("\r\n", "")
    html = (out / "report.html").read_text()
    assert html.count("Line ") >= 3 * 2  # each unit's example table has its rows


def test_case_K6_K8_report_on_a_file_or_an_interrupted_swap_says_what_happened(
    qwen_dir, tmp_path, capsys
):
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    assert main(["report", str(plain)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a run directory" in err and f"--out {plain}" not in err
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    # a kill between the swap's two renames: the results sit beside RUN, RUN is missing
    os.replace(out, rundir._sibling(out, "old"))
    for command in ("report", "explain"):
        assert main([command, str(out)]) == 2
        err = capsys.readouterr().err
        assert "stopped while replacing its results" in err and "--resume" in err
        assert str(rundir._sibling(out, "old")) in " ".join(err.split())
    assert main([*study_args(qwen_dir, out), "--resume"]) == 0  # and --resume finishes it
    assert main(["report", str(out)]) == 0


def test_case_K7_open_run_refuses_an_edited_run(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert main(study_args(qwen_dir, out)) == 0
    neurons = out / "neurons.csv"
    neurons.write_text(neurons.read_text().replace(",", ";", 1))  # an edited header
    with pytest.raises(rundir.RunDirError, match="mixes files from different runs: neurons.csv"):
        sklens.open_run(out)
    (out / "manifest.json").unlink()
    with pytest.raises(rundir.RunDirError, match="has no valid manifest.json"):
        sklens.open_run(out)


def test_case_92a_a_full_disk_at_the_lock_names_the_path_and_leaves_no_lock(
    qwen_dir, tmp_path, monkeypatch, capsys
):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "pwrite", full)
    out = tmp_path / "run0"
    assert main(study_args(qwen_dir, out)) == 2
    err = " ".join(capsys.readouterr().err.split())
    lock = rundir._sibling(out, "lock")
    assert f"cannot write the lock file {lock} (No space left on device)" in err
    assert "free space" in err and not lock.exists()


def test_a_run_killed_in_its_causal_check_goes_on_from_its_finished_sets(
    qwen_dir, tmp_path, monkeypatch
):
    """A kill during the causal check (hundreds of passes on a CPU) cost the whole check; the
    resumed run evaluates only the sets the kill left undone, writes the table of a run never
    killed, says what it reused, and leaves no pieces behind."""
    import sklens.causal.check as check_mod

    monkeypatch.setattr(cpu_ledger, "TICK_S", 0.01)  # the phase in progress recorded often
    extra = ("--ablate", "--ablate-modes", "zero", "--n-random", "4", "--n-causal", "8",
             "--seeds", "0,1")  # fmt: skip
    whole, out = tmp_path / "whole", tmp_path / "run"
    steps = count_optimizer_steps(monkeypatch)
    assert main(study_args(qwen_dir, whole, *extra)) == 0
    trainings = steps["n"]  # the run's own and seed 1's: seed 0 is the run's prompt
    real, calls = check_mod.evaluate, {"n": 0}

    def killed_after_three(*args, **kwargs):
        if kwargs.get("intervention") is not None:
            if calls["n"] == 3:
                raise RuntimeError("killed")
            calls["n"] += 1
        return real(*args, **kwargs)

    cpu_before = time.process_time()
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="killed"):
        m.setattr(check_mod, "evaluate", killed_after_three)
        main(study_args(qwen_dir, out, *extra))
    killed = json.loads((rundir.staging_dir(out) / cpu_ledger.LEDGER).read_text())
    assert len(killed) == 1 and killed[0]["open"]["after"] == "examples"  # in the causal check
    assert killed[0]["open"]["cpu_s"] > 0
    assert len(list((rundir.staging_dir(out) / rundir.PARTS / "causal").glob("*.csv"))) == 3

    calls["n"], steps["n"] = -100, 0  # counts the resumed run's edited passes from -100
    monkeypatch.setattr(check_mod, "evaluate", killed_after_three)
    assert main(study_args(qwen_dir, out, *extra, "--resume")) == 0
    assert calls["n"] == -100 + (4 + 2) - 3  # selected, positive, 4 random; 3 were done
    assert steps["n"] == trainings / 2  # seed 1 only: the prompt was kept, seed 0 is it
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "causal.csv"), pd.read_csv(whole / "causal.csv")
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "consensus.csv"), pd.read_csv(whole / "consensus.csv")
    )
    cpu_both = time.process_time() - cpu_before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == {"causal": 3}
    # CPU seconds over both attempts: the killed one's causal passes count with the causal
    # phase; together they are this process's CPU over the two attempts, less the set-up before
    # each attempt's first phase
    every, last = summary["cpu_s_all_attempts"], summary["cpu_s"]
    assert summary["attempts"] == 2 and summary["interrupted_cpu_s"] > 0
    assert every["causal"] == pytest.approx(last["causal"] + summary["interrupted_cpu_s"], abs=0.02)
    assert every["train"] > last["train"] and set(every) == set(last)
    assert 0.5 * cpu_both < sum(every.values()) <= cpu_both
    assert not (out / cpu_ledger.LEDGER).exists()
    assert (
        not (out / rundir.PARTS).exists()
        and rundir.PARTS not in rundir.read_manifest(out)["stages"]
    )
    assert rundir.mismatched_files(out) == []
