"""Writes docs/reproduction.md from the three studies' results.json files.

    python demos/rq1_skillmix.py --docs && python demos/rq2_hans.py --docs \\
        && python demos/rq3_arithmetic.py --docs
    python demos/make_reproduction_doc.py demo-out/rq1 demo-out/rq2 demo-out/rq3
    # with the --size full runs beside them (the plain account then reads the full runs):
    python demos/make_reproduction_doc.py demo-out/rq1 demo-out/rq2 demo-out/rq3 \\
        --full runs/rq1-full runs/rq2-full runs/rq3-full

The doc has one table with the paper beside sklens, study by study, each number next to the
command and results.json key that regenerate it; the figures; a plain account filled from the
numbers; and what a person wrote after reading the full runs (``reproduction_account.md``).
Runs of ``--size tiny`` are labelled as smoke runs at the top of the doc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from reproduction_text import account, get, table

REPO = Path(__file__).resolve().parent.parent

INTRO = """\
# Reproducing arXiv 2511.21610 with sklens

The paper finds skill neurons in Qwen1.5-1.8B-Chat with three studies: Skill-Mix with a skill
label (RQ1), HANS with a heuristic label (RQ2) and BigBench arithmetic with the model's own
per-example loss (RQ3). The demos in `demos/` run each study end to end on {models}: a
{n_tokens}-token prompt trained with AdamW 3e-3 until its held-out loss reaches a plateau or a step
cap (the table says which), the paper's metric
scanned with a max-statistic permutation null, the top-10 neurons re-measured on a disjoint
split, ablated on a third split against scale-matched random neurons, and the whole pipeline
repeated for {n_seeds} training seeds.
"""

# what a person wrote after reading the full runs' numbers and figures (quoted, with commands)
ACCOUNT = Path(__file__).resolve().parent / "reproduction_account.md"

SMOKE_ACCOUNT = """\
### What reproduces

_Smoke runs carry no evidence about the paper; the account of the full runs is written in
`demos/reproduction_account.md` and included when no run is `--size tiny`._
"""


def kept(doc: Path, results: dict[str, Any]) -> Path:
    """Where a run's numbers and figures are copied beside the doc: ``reproduction/<study>``,
    with ``-full`` for a ``--size full`` run."""
    suffix = "-full" if results["size"] == "full" else ""
    return doc.parent / "reproduction" / f"{results['study']}{suffix}"


def figure_link(results: dict[str, Any], run: Path, name: str, rel: str, doc_dir: Path) -> str:
    """A link to the figure, preferring its copy in docs/ when the run made one (a full run's
    figures are linked where ``main`` copied them, beside the doc)."""
    target = run / rel
    copies = [] if results["size"] == "full" else results.get("docs_figures") or []
    for copied in copies:
        if Path(copied).name == Path(rel).name and (REPO / copied).exists():
            target = REPO / copied
    return f"![{results['study']} {name}]({os.path.relpath(target.resolve(), doc_dir.resolve())})"


def _phase_times(label: str, all_results: list[dict[str, Any]], key: str) -> list[str]:
    lines = [label, ""]
    for results in all_results:
        times = results.get(key)
        if times:
            shown = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
            lines.append(f"- {results['study'].upper()} ({results['size']}): {shown}")
    return [*lines, ""] if len(lines) > 2 else []


def render(runs: list[Path], doc: Path, full_runs: list[Path] | None = None) -> str:
    all_results = [json.loads((run / "results.json").read_text()) for run in runs]
    full = [json.loads((run / "results.json").read_text()) for run in full_runs or []]
    by_study = {r["study"]: r for r in full}
    models = sorted({get(r, "model.name") for r in all_results})
    sizes = sorted({r["size"] for r in all_results})
    lines = [
        INTRO.format(
            models=", ".join(f"`{m}`" for m in models),
            n_seeds=max(len(get(r, "settings.seeds") or []) for r in all_results),
            n_tokens="/".join(sorted({str(get(r, "settings.n_tokens")) for r in all_results})),
        )
    ]
    if "tiny" in sizes:
        lines += [
            f"**Generated from `--size {'/'.join(sizes)}` runs: smoke-test numbers, not a "
            "reproduction.**",
            "",
        ]
    lines += [
        "## The paper beside sklens",
        "",
        "Each run's `results.json`, `summary.md` and CSV tables are kept in "
        f"`{os.path.relpath(doc.parent / 'reproduction', doc.parent)}/<study>/`.",
        "",
        table(all_results, by_study),
        "",
    ]
    lines += ["## Figures", ""]
    shown = {r["study"]: (r, run) for r, run in zip(all_results, runs, strict=True)}
    shown |= {r["study"]: (r, kept(doc, r)) for r in full}  # the full run's, copied beside the doc
    for results, run in shown.values():
        lines += [f"### {results['title']} (`--size {results['size']}`)", ""]
        lines += [
            figure_link(results, run, name, rel, doc.parent)
            for name, rel in (results.get("figures") or {}).items()
        ]
        lines.append("")
    lines += ["## A plain account", ""]
    for results in all_results:
        read = by_study.get(results["study"], results)  # the full run where there is one
        lines += [f"**{read['title']}** (`--size {read['size']}`)", ""]
        lines += [f"- {sentence}" for sentence in account(read)]
        lines.append("")
    lines += [SMOKE_ACCOUNT if "tiny" in sizes else ACCOUNT.read_text(), "## Regenerate", ""]
    lines += [f"    {r['command']}" for r in [*all_results, *full]]
    extra = f" --full {' '.join(str(r) for r in full_runs)}" if full_runs else ""
    command = f"python demos/make_reproduction_doc.py {' '.join(str(r) for r in runs)}{extra}"
    lines += [f"    {command}", ""]
    everything = [*all_results, *full]
    lines += _phase_times(
        "Wall time per phase (s; a run that was paused while the machine did other work counts "
        "the pause, see the account):",
        everything,
        "timings_s",
    )
    lines += _phase_times(
        "CPU time per phase (s, summed over the process's threads; not inflated by a run that "
        "was paused, as wall time is):",
        everything,
        "cpu_s",
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", default=["demo-out/rq1", "demo-out/rq2", "demo-out/rq3"])
    p.add_argument("--full", nargs="*", default=[], help="the --size full runs, beside the others")
    p.add_argument("--out", default=str(REPO / "docs" / "reproduction.md"))
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    full_runs = [Path(r) for r in args.full]
    missing = [str(r) for r in [*runs, *full_runs] if not (r / "results.json").exists()]
    if missing:
        raise SystemExit(f"no results.json in {missing}: run the demos first (see the docstring)")
    doc = Path(args.out)
    doc.parent.mkdir(parents=True, exist_ok=True)
    for run in [*runs, *full_runs]:  # the numbers behind the doc, kept beside it
        results = json.loads((run / "results.json").read_text())
        keep = kept(doc, results)
        (keep / "figures").mkdir(parents=True, exist_ok=True)
        for source in [run / "results.json", run / "summary.md", *sorted(run.glob("*.csv"))]:
            shutil.copyfile(source, keep / source.name)
        if results["size"] == "full":  # the doc shows the full runs' figures from these copies
            for rel in (results.get("figures") or {}).values():
                shutil.copyfile(run / rel, keep / rel)
    doc.write_text(render(runs, doc, full_runs))
    print(f"wrote {doc}")
    return doc


if __name__ == "__main__":
    main()
