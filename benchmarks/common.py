"""Shared set-up for the benchmarks: the embedded model, BigBench questions, timing, results."""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import random
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import sklens
from sklens.app.study import versions
from sklens.models.precision import cpu_has_bf16

RESULTS = Path(__file__).resolve().parent / "results"


ALLOCATOR = "glibc's default"


class _Parser(argparse.ArgumentParser):
    """Applies ``--malloc`` when the flags are parsed, before any work."""

    def parse_args(self, *args, **kwargs):  # type: ignore[override]
        parsed = super().parse_args(*args, **kwargs)
        global ALLOCATOR
        if parsed.malloc == "held" and sklens.hold_freed_memory():
            ALLOCATOR = "freed memory held (sklens.hold_freed_memory, as sklens run)"
        return parsed


def parser(description: str) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=sklens.DEFAULT_MODEL, help="model name or path")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
        help="the model's dtype (HF's too, where a benchmark compares with it)",
    )  # fmt: skip
    p.add_argument("--n-slots", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the tables are appended")
    p.add_argument(
        "--malloc",
        choices=("held", "default"),
        default="held",
        help="keep freed memory in the process, as `sklens run` does (default), or glibc's default",
    )
    return p


def examples(n: int) -> list[sklens.Example]:
    """``n`` BigBench arithmetic questions (the README's study), cycled if needed."""
    pool = sklens.data.bigbench_arithmetic()
    random.Random(0).shuffle(pool)  # mix the four operations
    return [pool[i % len(pool)] for i in range(n)]


def metric() -> sklens.metrics.Metric:
    """The label metric the benchmarks scan with (varies across the shuffled questions)."""
    return sklens.metrics.label("operation", positive="multiplication")


def reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(field: str) -> int:
    status = Path("/proc/self/status")
    if status.exists():
        return int(re.search(rf"{field}:\s+(\d+)", status.read_text()).group(1))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_kb() -> int:
    """The process's resident memory now (kB)."""
    return _status_kb("VmRSS")


def peak_rss_kb() -> int:
    """The process's peak resident memory since the last ``reset_peak_rss`` (kB)."""
    return _status_kb("VmHWM")


@dataclass
class Timing:
    """Wall and CPU seconds (all the process's threads) of each run of each method, and the most
    its peak memory rose. CPU time leaves out time the hypervisor gave to other machines, which
    a noisy VM adds to the wall clock."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    peaks: dict[str, float]

    @classmethod
    def of(cls, names: list[str]) -> Timing:
        return cls({n: [] for n in names}, {n: [] for n in names}, dict.fromkeys(names, 0.0))

    def run(self, name: str, fn: Callable[[], object], device: str) -> float:
        """Time one run of ``fn`` as method ``name``; its wall time (s)."""
        cuda = device.startswith("cuda")
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        else:
            reset_peak_rss()
            before = rss_kb() / 1024
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        self.wall[name].append(time.perf_counter() - start)
        self.cpu[name].append(time.process_time() - cpu)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_kb() / 1024
        self.peaks[name] = max(self.peaks[name], peak - before)
        return self.wall[name][-1]


def interleaved(methods: dict[str, Callable[[], object]], rounds: int, device: str) -> Timing:
    """Each method once per round, the order rotated every round, after one warm-up run each.
    On a noisy machine a ratio *within* a round is what holds."""
    for fn in methods.values():
        fn()
    names = list(methods)
    timing = Timing.of(names)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds = timing.run(name, methods[name], device)
            print(f"round {r}: {name} {seconds:.2f} s", flush=True)
    return timing


def paired(
    methods: dict[str, Callable[[], object]],
    floors: dict[str, str],
    rounds: int,
    device: str,
) -> tuple[Timing, Timing]:
    """Each method timed next to its floor (``floors[name]``, a key of ``methods``), floor first
    in even rounds and second in odd ones, the methods' order rotated every round, after one
    warm-up run each. Returns the methods' timing and that of the floor runs beside each (under
    the method's name): a slow drift of the machine's speed cancels in the ratio of a pair,
    which is what ``ratios`` takes."""
    for fn in methods.values():
        fn()
    names = [name for name in methods if name in floors]
    timing, beside = Timing.of(list(methods)), Timing.of(names)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            floor = floors[name]
            for which in (floor, name) if r % 2 == 0 else (name, floor):
                timing.run(which, methods[which], device)
                if which == floor:
                    beside.wall[name].append(timing.wall[floor][-1])
                    beside.cpu[name].append(timing.cpu[floor][-1])
            print(
                f"round {r}: {name} {timing.wall[name][-1]:.2f} s / floor {beside.wall[name][-1]:.2f} s"
            )
    return timing, beside


def ratios(times: list[float], base: list[float]) -> str:
    """Median and range of the per-round ratios ``times[i] / base[i]``."""
    r = [t / b for t, b in zip(times, base, strict=True)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def paired_rows(
    timing: Timing, beside: Timing, n: int, ratio_header: str
) -> tuple[list[str], list[list[object]]]:
    """The table of a ``paired`` timing: method, N, median s, the ratio to the run beside it in
    wall and in CPU time (``"1"`` for the runs others are paired with), the peak memory's rise."""
    header = [
        "method",
        "N",
        "median s",
        ratio_header,
        "same, CPU time",
        "peak memory above before (MB)",
    ]
    rows = [
        [
            name,
            n,
            f"{statistics.median(t):.2f}",
            ratios(t, beside.wall[name]) if name in beside.wall else "1",
            ratios(timing.cpu[name], beside.cpu[name]) if name in beside.cpu else "1",
            f"{timing.peaks[name]:.0f}",
        ]
        for name, t in timing.wall.items()
    ]
    return header, rows


def machine(device: str) -> str:
    """The device, and for a CPU its model, its bfloat16 instructions and the threads used."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    bf16 = "bf16 instructions" if cpu_has_bf16() else "no bf16 instructions"
    return f"{model}, {bf16}, {torch.get_num_threads()} threads"


def write_results(
    name: str, header: list[str], rows: list[list[object]], device: str, results: Path = RESULTS
) -> str:
    """Print a Markdown table and append it (dated, with machine and versions) to results/."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    v = versions()
    lines = [
        f"### {name} — {stamp}, {machine(device)} ({device})",
        f"torch {v['torch']}, transformer-lens {v['transformer-lens']}, transformers {v['transformers']}; "
        f"allocator: {ALLOCATOR}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / f"{name}.md", "a", encoding="utf-8") as fh:
        fh.write(table + "\n")
    return table
