"""Run one of the paper's studies (``demos/rqN_*.py`` define them) and draw its figures.

The study is ``sklens.run_study`` with the study's ``StudyConfig`` at the chosen size: every
number, table and the report land in ``OUT/run`` (``summary.json``, the CSVs, ``report.html``).
Beside it ``study.json`` records the command, the paper's claim and threshold, the share of
units above that threshold (``sklens.sparsity``) and the figures: the top unit's activation KDE
by each of the study's groupings on the selection and held-out splits (the paper's Figures 2, 3
and 5), the score histogram with the top-10 threshold and the null (Figures 4, 6 and 7), and
the training curve. ``--docs`` also copies the PNGs to ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from study_spec import SIZES, Study

import sklens
from sklens import figures, sites

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"{study.title} (arXiv 2511.21610), end to end")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--out", default=f"demo-out/{study.key}", help="output folder")
    p.add_argument("--model", default=sklens.DEFAULT_MODEL, help="default: the embedded model")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: as sklens run)")
    p.add_argument("--data", default=None, help="the task's data instead of the built-in")
    p.add_argument("--resume", action="store_true", help="reuse the stages of an earlier run")
    p.add_argument("--docs", action="store_true", help="copy the PNG figures to docs/")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if study.within:
        p.add_argument(
            "--within", action="store_true",
            help=f"scan the within-{study.within} r with permutations inside each {study.within} "
            "(sklens's --permutation-groups; no bootstrap, which resamples the marginal r)",
        )  # fmt: skip
    if study.negative_control:
        p.add_argument(
            "--negative-control", action="store_true",
            help=f"permute {study.negative_control!r} among the examples first "
            "(sklens's --shuffle-label): the whole study when there is nothing to find",
        )  # fmt: skip
    return p


def draw(study: Study, run_dir: Path, folder: Path) -> dict[str, str]:
    """The study's figures (PNG and SVG) under ``folder``; returns name -> PNG path."""
    run = sklens.open_run(run_dir)
    top = run.neurons.head(1)
    first = top.iloc[0]
    where = (
        f"{sites.unit_label(first.site, int(first.layer), int(first.unit))} slot {int(first.slot)}"
    )
    made = {}

    def save(fig: figures.NotebookFigure, name: str) -> None:
        made[name] = str(figures.save(fig, folder / f"{study.key}_{name}")[0])

    for split, examples in (("select", run.task.val), ("heldout", run.task.confirm)):
        acts = sklens.slot_activations(run.model, run.prompt, examples, top, progress=False)
        values = acts[:, 0, int(first.slot)].numpy()
        for grouping in study.groupings:
            labels = [grouping.label(e) for e in examples]
            keep = [i for i, g in enumerate(labels) if g is not None]
            title = f"top unit ({where}) by {grouping.name}, {split} split"
            fig = figures.kde_by_group(values[keep], [labels[i] for i in keep], title=title)
            save(fig, f"kde_{grouping.name}_{split}")
    scan = sklens.Scan.load(run_dir / "scan.safetensors")
    save(figures.score_histogram(scan, k=len(run.neurons)), "scores")
    save(figures.training_curve(run.prompt.history), "training")
    return made


def within(config: sklens.StudyConfig, field: str) -> sklens.StudyConfig:
    """The study asking which units track its metric inside each group of ``field``."""
    scan = replace(config.scan, permutation_groups=field)
    return replace(config, scan=scan, confirm=replace(config.confirm, bootstrap=0))


def main(study: Study, argv: Sequence[str] | None = None) -> Path:
    """Run ``study`` with command-line ``argv``; return the folder holding ``study.json``."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser(study).parse_args(given)
    try:  # a bad setting fails here, before any model work
        config = replace(study.at(args.size), model=args.model, device=args.device, data=args.data)
        if getattr(args, "negative_control", False):
            config = replace(config, shuffle_label=study.negative_control)
        if getattr(args, "within", False):
            config = within(config, study.within)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"{study.key}: {err}") from None
    out = Path(args.out)
    sklens.run_study(config, out / "run", resume=args.resume, progress=not args.quiet)
    made = draw(study, out / "run", out / "figures")
    if args.docs:
        for png in made.values():
            shutil.copyfile(png, DOCS / Path(png).name)
    scan = sklens.Scan.load(out / "run" / "scan.safetensors")
    above = sklens.sparsity(scan, thresholds=(study.paper_threshold,))["frac_above"]
    record = {
        "study": study.key, "title": study.title, "size": args.size, "run": "run",
        "command": shlex.join(["python", f"demos/{study.script}", *given]),
        "paper": {"threshold": study.paper_threshold, "claim": study.paper_claim,
                  "frac_above_threshold": above[study.paper_threshold]},
        "data_note": study.data_note,
        "figures": {name: str(Path(png).relative_to(out)) for name, png in made.items()},
    }  # fmt: skip
    (out / "study.json").write_text(json.dumps(record, indent=2))
    print(f"{study.title}: {out / 'run'} (sklens report {out / 'run'}), {out / 'study.json'}")
    return out
