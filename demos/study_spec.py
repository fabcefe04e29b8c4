"""What a reproduction study is: the paper's claim and top-10 threshold, how its figures group
examples, and the ``sklens.StudyConfig`` it runs at each size (``demos/reproduce.py`` runs one).

Every study is the library's one pipeline (``sklens.run_study``) with the paper's settings: a
20-slot prompt trained with AdamW 3e-3 to the plateau of its held-out loss, the paper's metric
scanned with a 200-permutation max-statistic null, the top-10 re-measured on a disjoint split,
three training seeds, the contrast against an untrained prompt and no prompt, bootstrap
stability of the selection, attribution of the loss to every unit, and the causal check against
199 score- and scale-matched random sets with a positive control, and its dose-response
against 49 per k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import sklens
from sklens import CausalConfig, ConfirmConfig, ScanConfig, SelectConfig, StudyConfig, TrainConfig


@dataclass(frozen=True)
class Grouping:
    """How a KDE figure groups examples: a label per example, or None to leave it out."""

    name: str
    label: Callable[[sklens.Example], object]


@dataclass(frozen=True)
class Study:
    """One of the paper's studies: its settings, what the paper reports, what to draw."""

    key: str  # rq1, rq2, rq3: names of files and figures
    script: str  # the file that defines it, for the command recorded in study.json
    title: str
    config: StudyConfig  # the full size; ``at`` derives the others
    paper_threshold: float  # the paper's top-10 |score| threshold
    paper_claim: str
    groupings: tuple[Grouping, ...]
    data_note: str = ""
    negative_control: str | None = None  # the label --negative-control permutes (a label study)
    within: str | None = None  # the meta field --within scans within (its groups' r, pooled)

    def at(self, size: str) -> StudyConfig:
        """The study's settings at ``size`` (``SIZES``)."""
        return SIZES[size](self.config)


def paper_config(task: str, metric: str) -> StudyConfig:
    """The paper's settings for ``task`` and ``metric``."""
    return StudyConfig(
        task=task, n_train=240, n_val=240, batch_size=8,
        train=TrainConfig(n_slots=20, steps=300, patience=2, eval_every=10, n_plateau=32),
        scan=ScanConfig(metric=metric, permutations=200),
        select=SelectConfig(top_k=10, n_extremal=10),
        confirm=ConfirmConfig(n_confirm=160, measures=("spearman", "eta_squared"), seeds=(0, 1, 2),
                              contrast=("untrained", "no_prompt"), bootstrap=200),
        causal=CausalConfig(ablate=True, ablate_modes=("mean",), n_random=199, n_causal=40,
                            attribute=True, dose_response=(1, 2, 5, 10)),
    )  # fmt: skip


def _budget(config: StudyConfig) -> StudyConfig:
    """A study that fits a working session on 2 CPU cores (about an hour: the causal check's 201
    passes are most of it): training capped at 60 steps (before the plateau on the embedded
    model) and no dose-response."""
    return replace(
        config,
        train=replace(config.train, steps=60),
        causal=replace(config.causal, dose_response=()),
    )


def _tiny(config: StudyConfig) -> StudyConfig:
    """A smoke run: every stage on a handful of examples (tests, and a first look)."""
    return replace(
        config, n_train=24, n_val=24,
        train=replace(config.train, n_slots=4, steps=4, eval_every=2, patience=1, n_plateau=8),
        confirm=replace(config.confirm, n_confirm=24, bootstrap=20),
        causal=replace(config.causal, n_random=3, n_causal=8, dose_response=(1, 2),
                       dose_random=3),
    )  # fmt: skip


SIZES: dict[str, Callable[[StudyConfig], StudyConfig]] = {
    "full": lambda config: config,  # meant for a GPU: hours per study on 2 CPU cores
    "budget": _budget,
    "tiny": _tiny,
}
