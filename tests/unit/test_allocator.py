"""``sklens.hold_freed_memory``: freed tensors stay mapped, so the next one faults in no pages.

Each case runs in a fresh interpreter (the setting is process-wide): it allocates and frees a
64 MiB and a 40 MiB tensor in 30 rounds, then counts the minor page faults of 10 more rounds
(``getrusage``). glibc serves blocks that large with ``mmap`` and unmaps them on free, so every
round faults all 26,624 of their pages in again; with freed memory held, none once the heap has
grown to the working set.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_PROBE = """
import resource, sys, torch
import sklens
held = sklens.hold_freed_memory() if sys.argv[1] == "held" else None
def rounds(n):
    for _ in range(n):
        x, y = torch.ones(16 * 2**20), torch.ones(10 * 2**20)  # 64 and 40 MiB, then freed
        del x, y
rounds(30)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_memory_is_reused_without_page_faults():
    held, faults = _faults("held")
    assert held == "True"
    assert faults < 1000  # 10 rounds × 26,624 pages would be 266,240
    assert _faults("default")[1] > 10 * 26_000  # what it removes: every page, every round


def test_the_command_line_holds_freed_memory(monkeypatch, tmp_path):
    import sklens.app.cli as cli

    calls = []
    monkeypatch.setattr(cli, "hold_freed_memory", lambda: calls.append(True))
    assert cli.main(["fetch", "--from", str(tmp_path / "missing")]) != 0
    assert calls == [True]
