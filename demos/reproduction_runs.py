"""The demo output folders behind ``docs/reproduction.md``: what each one is, where it came from,
and whether they may stand side by side.

A demo folder (``demos/rq*.py --out OUT``) holds ``study.json`` (the command, the paper's claim
and threshold, the share of units above it, the figures) and ``run/`` (``summary.json`` and the
CSVs of ``docs/reference/run-directory.md``). A folder's role is read from what ran, not from
its name: ``summary.json["config"]["shuffle_label"]`` marks RQ1's negative control and
``config.scan.permutation_groups`` RQ3's within-operation run, with the command's flags as a
second witness. Runs made by different sklens commits are refused together unless the caller
allows it, because a table that puts them side by side says they are the same code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

NEGATIVE_CONTROL = "negative control"
WITHIN = "within"
MAIN = "main"
SIZES = ("tiny", "budget", "full")
ROLES = (MAIN, NEGATIVE_CONTROL, WITHIN)
# a CSV larger than this stays in the run folder (the full runs' contrast tables hold every unit)
KEEP_LIMIT = 2_000_000


@dataclass(frozen=True)
class Run:
    """One demo folder: its ``study.json``, its run's ``summary.json`` and its CSV tables."""

    folder: Path
    study: dict[str, Any]
    summary: dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.folder / self.study.get("run", "run")

    @property
    def key(self) -> str:
        return self.study["study"]

    @property
    def size(self) -> str:
        return self.study["size"]

    @property
    def role(self) -> str:
        """``negative control`` (a label permuted), ``within`` (a grouped null) or ``main``."""
        config, command = self.summary["config"], self.study["command"]
        if config.get("shuffle_label") or "--negative-control" in command:
            return NEGATIVE_CONTROL
        if config["scan"].get("permutation_groups") or "--within" in command:
            return WITHIN
        return MAIN

    @property
    def label(self) -> str:
        """How the doc names the run: ``RQ1 budget``, ``RQ1 negative control (full)``."""
        if self.role == MAIN:
            return f"{self.key.upper()} {self.size}"
        what = f"within {self.summary['config']['scan']['permutation_groups']}"
        return f"{self.key.upper()} {what if self.role == WITHIN else self.role} ({self.size})"

    @property
    def slug(self) -> str:
        """The folder name of the run's copy beside the doc: ``rq1-budget``, ``rq3-within-full``."""
        role = "" if self.role == MAIN else self.role.replace(" ", "-") + "-"
        return f"{self.key}-{role}{self.size}"

    @property
    def commit(self) -> str:
        return self.summary.get("versions", {}).get("sklens commit") or "not recorded"

    @cached_property
    def tables(self) -> dict[str, pd.DataFrame | None]:
        """The run's CSVs by file name, read once (a table the run did not write is None)."""
        return {}

    def csv(self, name: str) -> pd.DataFrame | None:
        """``run/<name>``, or None where the stage that writes it did not run."""
        if name not in self.tables:
            path = self.run_dir / name
            self.tables[name] = pd.read_csv(path) if path.exists() else None
        return self.tables[name]


def load(folder: Path) -> Run:
    """The demo folder ``folder``; SystemExit naming what is missing when it is not one."""
    study_file = folder / "study.json"
    if not study_file.exists():
        raise SystemExit(f"no study.json in {folder}: pass the --out folder of a demos/rq*.py run")
    study = json.loads(study_file.read_text())
    summary_file = folder / study.get("run", "run") / "summary.json"
    if not summary_file.exists():
        raise SystemExit(f"no run/summary.json in {folder}: the study did not finish")
    return Run(folder, study, json.loads(summary_file.read_text()))


def order(runs: list[Run]) -> list[Run]:
    """Study by study; within one, the main runs first, smallest size first; one run per slot."""
    seen: dict[str, Run] = {}
    for run in runs:
        if run.slug in seen:
            raise SystemExit(
                f"{seen[run.slug].folder} and {run.folder} are both {run.label}: pass one"
            )
        seen[run.slug] = run
    return sorted(runs, key=lambda r: (r.key, ROLES.index(r.role), SIZES.index(r.size)))


def mixed_commits(runs: list[Run], allow: bool) -> str | None:
    """None when every run has the same sklens commit; otherwise SystemExit naming the runs and
    their commits, or with ``allow`` the note the doc opens with."""
    commits = {run.commit for run in runs}
    if len(commits) <= 1:
        return None
    listed = "; ".join(f"{run.label} ({run.folder}): {run.commit}" for run in runs)
    if not allow:
        raise SystemExit(
            f"the runs were made by different sklens commits, so a table of them would compare "
            f"different code: {listed}. Re-run them from one commit, or pass "
            "--allow-mixed-commits to put them side by side anyway (the doc then says so)."
        )
    return (
        "**These runs were made by different sklens commits** (generated with "
        f"`--allow-mixed-commits`): {listed}. A difference between two columns may be the code's."
    )


def dirty_note(runs: list[Run]) -> str | None:
    """The call-out for runs made from a checkout with uncommitted changes (``+dirty``)."""
    dirty = [run for run in runs if run.commit.endswith("+dirty")]
    if not dirty:
        return None
    names = ", ".join(f"{run.label} (`{run.commit}`)" for run in dirty)
    return (
        f"**Made from a checkout with uncommitted changes:** {names}. Their commit alone does "
        "not regenerate them."
    )


def _data_source(summary: dict[str, Any]) -> str:
    """The data a run read, as its summary records it, with the splits' hashes."""
    data = summary["data"]
    source = data.get("source") or {}
    parts = [f"{k} {v}" for k, v in source.items() if k != "kind"]
    hashes = f"train {data.get('train_hash')}, val {data.get('val_hash')}"
    return f"{data['task']}: {source.get('kind', 'unknown')} ({', '.join(parts)}); {hashes}"


def provenance(runs: list[Run]) -> list[str]:
    """One table row per run: the code, the packages, the data and the model it ran with."""
    lines = [
        '| run | sklens (`versions.sklens`, `versions["sklens commit"]`) | packages '
        "(`versions`) | data (`data.source`, `data.*_hash`) | model, device, dtype (`model`) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        versions = dict(run.summary.get("versions", {}))
        sklens = f"{versions.pop('sklens', '?')}, `{run.commit}`"
        if run.commit.endswith("+dirty"):
            sklens += " **(uncommitted changes)**"
        versions.pop("sklens commit", None)
        packages = ", ".join(f"{k} {v}" for k, v in versions.items())
        model = run.summary["model"]
        where = f"{model['name']}, {model.get('device', 'not recorded')}, "
        where += str(model.get("dtype", run.summary["config"].get("dtype", "not recorded")))
        lines.append(
            f"| {run.label} | {sklens} | {packages} | {_data_source(run.summary)} | {where} |"
        )
    return lines


def keep(run: Run, dest: Path) -> dict[str, Path]:
    """Copy the run's ``study.json``, ``summary.json``, CSVs (up to ``KEEP_LIMIT`` bytes each)
    and PNG figures to ``dest``, so the doc's numbers and figures sit beside it; returns each
    figure's name and copy."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.folder / "study.json", dest / "study.json")
    for source in [run.run_dir / "summary.json", *sorted(run.run_dir.glob("*.csv"))]:
        if source.stat().st_size <= KEEP_LIMIT:
            shutil.copyfile(source, dest / source.name)
    figures = {}
    for name, rel in (run.study.get("figures") or {}).items():
        figures[name] = dest / Path(rel).name
        shutil.copyfile(run.folder / rel, figures[name])
    return figures


def cost(runs: list[Run]) -> list[str]:
    """One table row per run: CPU seconds per phase over every attempt (a killed run resumed is
    several), the attempts, and the wall seconds with the CPU/wall ratio, which a pause or
    another job on the machine lowers (a run of two attempts has no one wall time)."""
    lines = [
        "| run | CPU seconds per phase, all attempts (`cpu_s_all_attempts`, else `cpu_s`) | "
        "CPU total | attempts | wall (`timings_s`), CPU/wall |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        cpu = run.summary.get("cpu_s_all_attempts") or run.summary.get("cpu_s") or {}
        attempts = run.summary.get("attempts", 1)
        phases = ", ".join(f"{name} {seconds:,.0f}" for name, seconds in cpu.items())
        total = sum(cpu.values())
        wall = sum((run.summary.get("timings_s") or {}).values())
        walled = (
            f"{wall:,.0f} s, {total / wall:.2f}" if attempts == 1 and wall else
            f"not one process ({attempts} attempts)"
        )  # fmt: skip
        lines.append(f"| {run.label} | {phases} | {total:,.0f} s | {attempts} | {walled} |")
    return lines
