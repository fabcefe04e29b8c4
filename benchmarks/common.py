"""Shared set-up for the benchmarks: the embedded model, BigBench questions, timing, results."""

from __future__ import annotations

import argparse
import datetime
import platform
import random
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


def median_time(fn: Callable[[], object], repeats: int, device: str, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn`` over ``repeats`` runs after ``warmup``."""
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
