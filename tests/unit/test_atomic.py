"""Atomic writes leave nothing behind: a killed writer's temporary is removed by the next write,
a live writer's is not; the same for partial directories (fetches, GGUF conversions)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import sklens
from sklens.atomic import atomic_path, partial_dir, write_text
from tests.helpers import ROOT


def _python(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )


def _killed_inside(code: str) -> None:
    """Run ``code`` (which prints "inside" and then waits) and SIGKILL it once it is inside."""
    proc = _python(code)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.multiprocess
def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "report.html"
    hold = (
        "import time; from sklens.atomic import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n"
        "    tmp.write_text('half'); print('inside', flush=True); time.sleep(60)\n"
    )
    _killed_inside(hold)
    assert len(list(tmp_path.glob(".report.html.*.tmp"))) == 1
    live = _python(hold)  # a writer that is still running
    assert live.stdout.readline().strip() == "inside"
    try:
        write_text(target, "complete")
        left = list(tmp_path.glob(".report.html.*.tmp"))
        assert len(left) == 1 and left[0].read_text() == "half"  # only the live one is left
    finally:
        live.kill()
        live.wait()
    with atomic_path(target) as tmp:
        tmp.write_text("again")
    assert target.read_text() == "again" and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.multiprocess
def test_a_killed_partial_directory_is_removed_by_the_next_one(tmp_path):
    _killed_inside(
        "import time; from sklens.atomic import partial_dir\n"
        f"with partial_dir({str(tmp_path)!r}) as tmp:\n"
        "    (tmp / 'big').write_bytes(bytes(1000)); print('inside', flush=True); time.sleep(60)\n"
    )
    assert len(list(tmp_path.glob(".partial-*"))) == 1
    with partial_dir(tmp_path) as tmp:
        assert [p.name for p in tmp_path.glob(".partial-*")] == [tmp.name]
    assert not list(tmp_path.glob(".partial-*"))


def test_an_interrupted_gguf_conversion_leaves_no_partial_directory(llama_dir, tmp_path):
    """The probe's #103: a kill during dequantisation left a 385 MB .partial-* for good."""
    from tests.helpers import write_llama_gguf

    gguf = tmp_path / "tiny.gguf"
    write_llama_gguf(llama_dir, gguf)
    cache = tmp_path / "converted"
    _killed_inside(
        "import time, transformers, sklens\n"
        "real = transformers.PreTrainedModel.save_pretrained\n"
        "def save(self, *a, **k):\n"
        "    real(self, *a, **k); print('inside', flush=True); time.sleep(60)\n"
        "transformers.PreTrainedModel.save_pretrained = save\n"
        f"sklens.gguf_to_checkpoint({str(gguf)!r}, cache_dir=__import__('pathlib').Path({str(cache)!r}))\n"
    )
    assert len(list(cache.glob(".partial-*"))) == 1
    converted = sklens.gguf_to_checkpoint(gguf, cache_dir=cache)
    assert (converted / "config.json").exists() and not list(cache.glob(".partial-*"))


@pytest.mark.parametrize("text", ["Line one\rLine two", "trailing\r", "a\r\nb", 'quote " and ,'])
def test_case_I13_csv_round_trips_any_text(tmp_path, text):
    """A carriage return inside a field must not end a row (pandas reads a bare one as a row
    break unless the field is quoted); floats come back as written."""
    import pandas as pd

    from sklens.atomic import write_csv

    frame = pd.DataFrame({"instruction": [text, "plain"], "p": [0.05, 1 / 3], "k": [1, 2]})
    write_csv(frame, tmp_path / "t.csv")
    back = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert back.instruction.tolist() == [text, "plain"]
    assert back.p.tolist() == [0.05, 1 / 3] and back.k.tolist() == [1, 2]
