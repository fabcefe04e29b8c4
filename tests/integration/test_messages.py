"""Damaged inputs are named by file and line, with the fix in the syntax the user typed.

Cases of the reliability probe of issue 12 (numbers in the test names).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

import sklens
from sklens.app.cli import main
from sklens.data.bigbench import task_examples
from sklens.prompt.soft_prompt import SoftPrompt
from tests.helpers import forbid_work, probe_args, write_probe_task


@pytest.fixture
def no_work(monkeypatch):
    forbid_work(monkeypatch, ("load_model", "train_soft_prompt"))


def cli_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("sklens: error: ") and err.count("\n") == 1, err
    return err


def test_case_45_jsonl_that_is_not_utf8(tmp_path, capsys, no_work):
    task = write_probe_task(tmp_path / "task.jsonl")
    lines = task.read_bytes().splitlines(keepends=True)
    lines[6] = b"\xff\xfe" + lines[6]
    task.write_bytes(b"".join(lines))
    assert main(probe_args("unused", task, tmp_path / "o", "--metric", "label:big")) == 2
    assert "task.jsonl:7: not UTF-8 (byte 0xff at column 1); save the file as UTF-8" in cli_error(
        capsys
    )


def test_case_46_lone_surrogate(tmp_path, capsys, no_work):
    task = write_probe_task(tmp_path / "task.jsonl")
    lines = task.read_text().splitlines()
    lines[2] = lines[2].replace('"What is', '"What \\ud800is')
    task.write_text("\n".join(lines) + "\n")
    assert main(probe_args("unused", task, tmp_path / "o", "--metric", "label:big")) == 2
    err = cli_error(capsys)
    assert (
        "task.jsonl:3: field 'instruction' holds a lone surrogate '\\ud800' at character 6" in err
    )


def test_case_47_nan_values_name_the_file_lines(tmp_path, capsys, no_work):
    task = write_probe_task(tmp_path / "task.jsonl")
    lines = [json.loads(line) for line in task.read_text().splitlines()]
    for i, line in enumerate(lines):
        line["score"] = float("nan") if i % 7 == 3 else float(i)  # lines 4, 11, 18, ...
    task.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert main(probe_args("unused", task, tmp_path / "o", "--metric", "label:score")) == 2
    assert "task.jsonl:4: field 'score' is NaN, which is not a JSON number" in cli_error(capsys)


def test_truncated_jsonl_line_names_the_line(tmp_path, capsys, no_work):
    task = write_probe_task(tmp_path / "task.jsonl")
    task.write_text(task.read_text()[:-25])  # a copy cut off inside line 80
    assert main(probe_args("unused", task, tmp_path / "o", "--metric", "label:big")) == 2
    assert "task.jsonl:80: not valid JSON" in cli_error(capsys)


def test_incomplete_bigbench_example_names_its_line(tmp_path):
    examples = [{"input": f"What is {i} plus 1?", "target": str(i + 1)} for i in range(4)]
    del examples[2]["target"]
    path = tmp_path / "task.json"
    text = json.dumps({"name": "arith", "examples": examples}, indent=2)
    path.write_text(text)
    line = [i for i, s in enumerate(text.splitlines(), 1) if "What is 2" in s][0] - 1  # its "{"
    with pytest.raises(ValueError, match=f"task.json:{line}: example 2 needs 'target'"):
        task_examples(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"task.json:\d+: not valid JSON .*truncated or damaged"):
        task_examples(path)


def _run_dir(tmp_path, **config):
    run = tmp_path / "run"
    run.mkdir()
    summary = {
        "config": {**asdict(sklens.StudyConfig()), **config},
        "versions": {"sklens": "0.0.9"},
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def test_case_79_truncated_summary(tmp_path, capsys):
    run = _run_dir(tmp_path)
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[: len(text) // 2])
    assert main(["report", str(run)]) == 2
    err = cli_error(capsys)
    assert "run/summary.json:" in err and ": not valid JSON (" in err
    assert f"run `sklens run --out {run}` again" in err


def test_case_81_summary_from_another_version(tmp_path, capsys):
    run = _run_dir(tmp_path, checkpoint_every=50)
    assert main(["report", str(run)]) == 2
    err = cli_error(capsys)
    assert "has settings this sklens (" in err and "does not know: checkpoint_every" in err
    assert "written by sklens 0.0.9" in err


def test_a_run_whose_tables_name_units_neuron_is_refused(tmp_path, capsys):
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["top_neurons"] = [{"layer": 0, "neuron": 5, "slot": 1}]
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 2
    err = cli_error(capsys)
    assert "tables name the unit column 'neuron' (now 'unit')" in err
    assert f"run `sklens run --out {run}` again" in err


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        ({"d_model": 32}, "embedding has shape (4, 64), config says (4, 32)"),
        ({"n_slots": 0}, "n_slots must be at least 1"),
        ("history", "'history' must be a list"),
    ],
)
def test_case_38_edited_soft_prompt_json(qwen, tmp_path, edit, detail):
    SoftPrompt.init_for(qwen, 4).save(tmp_path / "p")
    path = tmp_path / "p" / "soft_prompt.json"
    saved = json.loads(path.read_text())
    if edit == "history":
        saved["history"] = 5
    else:
        saved["config"].update(edit)
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError) as info:
        SoftPrompt.load(tmp_path / "p")
    message = str(info.value)
    assert "holds a corrupted soft prompt: soft_prompt.json or soft_prompt.safetensors" in message
    assert detail in message


def test_case_42_scan_load_of_another_safetensors_file(qwen, tmp_path):
    SoftPrompt.init_for(qwen, 4).save(tmp_path / "p")
    with pytest.raises(ValueError, match="not a readable sklens scan .*not written by Scan.save"):
        sklens.Scan.load(tmp_path / "p" / "soft_prompt.safetensors")
