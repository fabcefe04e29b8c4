"""What a reproduction study is (``demos/reproduce.py`` runs one): how much data and compute a
run uses (``Sizes``, ``SIZES``), what the study scans and what the paper reports (``Study``), how
its figures group examples (``Grouping``), and what the phases share (``Context``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

import sklens


@dataclass(frozen=True)
class Sizes:
    """How much data and compute a run uses (``SIZES``; a few fields have flags)."""

    n_train: int  # includes the plateau slice
    n_plateau: int
    n_select: int
    n_confirm: int
    n_causal: int
    n_tokens: int
    max_steps: int  # training stops earlier on the plateau
    eval_every: int
    patience: int
    batch_size: int
    permutations: int
    seeds: tuple[int, ...]
    n_random: int
    modes: tuple[str, ...]
    top_k: int = 10
    lr: float = 3e-3  # the paper's
    n_boot: int = 1000  # bootstrap resamples of the held-out AUROC intervals


SIZES = {
    # the reproduction: 680 examples in four disjoint splits, 3 seeds each trained to the plateau
    # of its held-out loss (≤ 300 steps), a 200-permutation null, 19 random sets (smallest causal
    # p 0.05). On 2 CPU cores a training step of the embedded model takes ~5.4 s, so this runs
    # up to ~1.5 hours per study there; it is meant for a GPU.
    "full": Sizes(240, 32, 240, 160, 40, 20, 300, 10, 2, 8, 200, (0, 1, 2), 19, ("mean",)),
    # the same within 30 minutes per study on 2 CPU cores: training capped at 60 steps, which on
    # the embedded model is before the plateau (docs/reproduction.md gives the losses)
    "budget": Sizes(240, 32, 240, 160, 40, 20, 60, 10, 2, 8, 200, (0, 1, 2), 19, ("mean",)),
    # a smoke run: every phase on a handful of examples (tests, and a first look)
    "tiny": Sizes(24, 8, 24, 16, 8, 4, 4, 2, 1, 8, 200, (0, 1, 2), 3, ("mean",), n_boot=200),
}


@dataclass(frozen=True)
class Grouping:
    """How a KDE figure groups examples: a label per example, or None to leave it out."""

    name: str
    label: Callable[[sklens.Example], Any]


@dataclass(frozen=True)
class Study:
    """One of the paper's studies: what to scan, what the paper reports, what to draw."""

    key: str  # rq1, rq2, rq3: names of files and figures
    title: str
    task: str  # a sklens task name
    metric: str  # the paper's metric, as ``sklens run --metric`` spells it
    group_by: str  # meta field for per-group causal results and eta² on held-out data
    paper_threshold: float  # the paper's top-10 |score| threshold
    paper_claim: str
    groupings: tuple[Grouping, ...]
    measures: tuple[str, ...] = ("spearman", "eta_squared")
    prepare: Callable[[list[sklens.Example]], list[sklens.Example]] | None = None
    extras: Callable[[Any], dict[str, Any]] | None = None
    generate: Callable[[Path, int], Path] | None = None  # ``--data generated``: write a pool
    data_note: str = ""


@dataclass
class Context:
    """What the phases share; ``extras`` functions read it and add files under ``out``."""

    study: Study
    sizes: Sizes
    args: argparse.Namespace
    out: Path
    model: Any = None
    task: Any = None
    metric: Any = None
    prompts: dict[int, Any] = field(default_factory=dict)
    scans: dict[str, Any] = field(default_factory=dict)
    top: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)  # wall s per phase
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU s per phase (all threads)
