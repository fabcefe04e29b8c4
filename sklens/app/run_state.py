"""What the stages of a study hand on to each other (``sklens.app.study``): the settings, the
run directory being written, and what each stage has made so far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from sklens.app.config import StudyConfig
from sklens.app.cpu_ledger import CpuLedger
from sklens.app.rundir import PARTS
from sklens.app.tasks import TaskData
from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.metrics import Metric
from sklens.scanning.result import Scan
from sklens.units.sites import Site


@dataclass
class StudyRun:
    """One study in progress: its settings, where it writes, and each stage's outputs.

    ``out`` is the staging directory a run writes into, ``final`` the run directory it replaces
    when done (``sklens.app.rundir``). Fields after ``site`` start empty and are filled by the
    stage that makes them; ``summary`` collects each stage's part of ``summary.json``.
    """

    config: StudyConfig
    out: Path
    final: Path
    resume: bool
    progress: bool
    task: TaskData
    fit: list[Example]  # the training examples less the plateau slice
    plateau_kwargs: dict[str, Any]
    metric_spec: str
    metric: Metric
    site: Site
    stages: dict[str, dict[str, Any]]  # each fingerprinted stage's settings
    model: Model | None = None
    prompt: SoftPrompt | None = None
    result: Scan | None = None
    neurons: pd.DataFrame | None = None
    # the confirmation pass's activations and metric values (``read_neurons``), if it ran
    confirmed: tuple[Tensor, Tensor] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # the process's CPU seconds per phase (all threads): unlike the wall time, a pause or
    # another job on the machine does not inflate it
    cpu_timings: dict[str, float] = field(default_factory=dict)
    # every attempt's CPU seconds, where a killed run was resumed (``cpu_ledger``)
    ledger: CpuLedger | None = None
    _clock: float = field(default_factory=time.perf_counter)
    _cpu_clock: float = field(default_factory=time.process_time)

    def lap(self, name: str) -> None:
        """Record the wall and CPU seconds since the last lap as phase ``name``."""
        now, cpu = time.perf_counter(), time.process_time()
        self.timings[name] = round(now - self._clock, 2)
        self.cpu_timings[name] = round(cpu - self._cpu_clock, 2)
        self._clock, self._cpu_clock = now, cpu
        if self.ledger is not None:
            self.ledger.lap(name, self.cpu_timings[name])

    def parts(self, piece: str) -> Path:
        """The folder where the results stage keeps ``piece``'s finished parts until the run
        finishes (``rundir.PARTS``: a killed run resumed with the same settings goes on from
        them). What an earlier attempt left there is counted in ``summary["resumed"]``."""
        folder = self.out / PARTS / piece
        left = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
        if left:
            self.summary.setdefault("resumed", {})[piece] = left
        return folder

    @property
    def batch_size(self) -> int:
        return self.config.batch_size
