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
from pathlib import Path

import torch

import sklens
from sklens.app.study import versions

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default=sklens.DEFAULT_MODEL, help="model name or path")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-tokens", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the tables are appended")
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


def timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """``fn``'s wall time (s) and how far its peak memory rose above the memory before it (MB;
    CUDA memory on a GPU, RSS on CPU)."""
    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        before = rss_kb() / 1024
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_kb() / 1024
    return seconds, peak - before


def interleaved(
    methods: dict[str, Callable[[], object]], rounds: int, device: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each method once per round, the order rotated every round, after one warm-up run each:
    its wall times (s), and the most its peak memory rose (``timed``). On a noisy machine a
    ratio *within* a round is what holds."""
    for fn in methods.values():
        fn()
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, peak = timed(methods[name], device)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            print(f"round {r}: {name} {seconds:.2f} s", flush=True)
    return times, peaks


def paired(
    methods: dict[str, Callable[[], object]],
    floors: dict[str, str],
    rounds: int,
    device: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Each method timed next to its floor (``floors[name]``, a key of ``methods``), floor first
    in even rounds and second in odd ones, the methods' order rotated every round, after one
    warm-up run each. Returns each method's times, the times of the floor run beside it, and
    the most its peak memory rose. A slow drift of the machine's speed cancels in the ratio of
    a pair, which is what ``ratios`` takes."""
    for fn in methods.values():
        fn()
    names = [name for name in methods if name in floors]
    times: dict[str, list[float]] = {name: [] for name in methods}
    beside: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = dict.fromkeys(methods, 0.0)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            pair = (floors[name], name) if r % 2 == 0 else (name, floors[name])
            for which in pair:
                seconds, peak = timed(methods[which], device)
                times[which].append(seconds)
                peaks[which] = max(peaks[which], peak)
                if which != name:
                    beside[name].append(seconds)
            print(f"round {r}: {name} {times[name][-1]:.2f} s / floor {beside[name][-1]:.2f} s")
    return times, beside, peaks


def ratios(times: list[float], base: list[float]) -> str:
    """Median and range of the per-round ratios ``times[i] / base[i]``."""
    r = [t / b for t, b in zip(times, base, strict=True)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"


def paired_rows(
    times: dict[str, list[float]],
    beside: dict[str, list[float]],
    peaks: dict[str, float],
    n: int,
    ratio_header: str,
) -> tuple[list[str], list[list[object]]]:
    """The table of a ``paired`` timing: method, N, median s, the ratio to the run beside it
    (``"1"`` for the runs others are paired with) and the peak memory's rise."""
    header = ["method", "N", "median s", ratio_header, "peak memory above before (MB)"]
    rows = [
        [
            name,
            n,
            f"{statistics.median(t):.2f}",
            ratios(t, beside[name]) if name in beside else "1",
            f"{peaks[name]:.0f}",
        ]
        for name, t in times.items()
    ]
    return header, rows


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def write_results(
    name: str, header: list[str], rows: list[list[object]], device: str, results: Path = RESULTS
) -> str:
    """Print a Markdown table and append it (dated, with machine and versions) to results/."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    v = versions()
    lines = [
        f"### {name} — {stamp}, {machine(device)} ({device})",
        f"torch {v['torch']}, transformer-lens {v['transformer-lens']}, transformers {v['transformers']}",
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
