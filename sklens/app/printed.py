"""What the command line prints from a finished run, read back with no model (like the report):
the top neurons with their most and least activating examples and the run's verdict
(``sklens run``), and their ranked explanations (``sklens explain RUN_DIR``; the study ranks them
on its confirmation split, held out from the selection, and writes ``explanations.csv``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sklens.app import rundir
from sklens.app.verdict import verdict
from sklens.display import visible
from sklens.explanation.explain import summary_lines
from sklens.units import sites


def format_explanations(run_dir: str | Path, top: int = 3) -> str:
    """One summary line per top neuron, then each neuron's ``top`` best-ranked hypotheses."""
    run = Path(run_dir)
    summary, config = rundir.read_summary(run)
    rundir.check_consistent(run)
    path = run / "explanations.csv"
    if not path.exists():
        why = (
            "it was run with --n-confirm 0, and explanations need held-out examples"
            if config.confirm.n_confirm == 0
            else "it was written by an older sklens"
        )
        raise rundir.RunDirError(
            f"{run} has no explanations.csv: {why}; run `sklens run --out {run}` again with "
            "--n-confirm above 0"
        )
    table = pd.read_csv(path)
    neurons = pd.read_csv(run / "neurons.csv")
    n_confirm = summary.get("splits", {}).get("confirm")
    lines = [
        f"Explanations of the top {len(neurons)} neurons, ranked on the confirm split "
        f"({n_confirm} held-out examples); q: Benjamini–Hochberg over every neuron and "
        "hypothesis.",
        "",
        *summary_lines(table, neurons),
        "",
    ]
    shown = ["rank", "hypothesis", "kind", "measure", "effect", "lo", "hi", "q", "passes"]
    for row in neurons.itertuples():
        label = sites.unit_slot_label(getattr(row, "site", "mlp"), row.layer, row.unit, row.slot)
        rows = table[table.label == label].head(top)[shown]
        lines += [label, rows.to_string(index=False, float_format=lambda x: f"{x:.3g}"), ""]
    skipped = (summary.get("explanations") or {}).get("skipped") or {}
    if skipped:
        lines.append("Not tested: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()))
    return visible("\n".join(lines).rstrip())  # n-grams of the data may hold control codes


def format_table(out: str | Path, width: int = 60) -> str:
    """A readable table of the top units: the in-sample score beside the held-out r (where the
    run had a confirmation split), and each unit's most and least activating examples."""
    out = Path(out)
    neurons = pd.read_csv(out / "neurons.csv").rename(columns={"position": "slot"})  # older runs
    # completions such as "31" stay text, as they were written
    examples = pd.read_csv(out / "examples.csv", dtype={"instruction": str, "completion": str})
    labels = [sites.unit_label(*x) for x in zip(sites.site_names(neurons), neurons.layer,
                                                 neurons.unit, strict=True)]  # fmt: skip
    held = _held_out(out, neurons)
    lines = [
        f"{'#':>2} {'unit':>12} {'slot':>4} {'score':>7} {'held-out r [95% CI]':>22}  "
        "most / least activating example"
    ]
    for j, row in enumerate(neurons.itertuples()):
        top = examples[(examples.unit_rank == j) & (examples["rank"] == 0)]
        most = top[top.direction == "most"].iloc[0]
        least = top[top.direction == "least"].iloc[0]

        def short(text: str) -> str:
            text = visible(" ".join(str(text).split()))
            return text if len(text) <= width else text[: width - 1] + "…"

        lines.append(
            f"{j:>2} {labels[j]:>12} {row.slot:>4} {row.score:>7.3f} {held[j]:>22}  "
            f"+ {short(most.instruction)} → {short(most.completion)}"
        )
        lines.append(f"{'':>51}  - {short(least.instruction)} → {short(least.completion)}")
    return "\n".join(lines)


def _held_out(out: Path, neurons: pd.DataFrame) -> list[str]:
    """Each top unit's held-out r with its 95% interval, as printed; "-" without a
    confirmation split (``--n-confirm 0``)."""
    path = out / "heldout.csv"
    if not path.exists():
        return ["-"] * len(neurons)
    table = pd.read_csv(path)
    keys = ["layer", "unit", "slot"]
    merged = neurons[keys].merge(table, on=keys, how="left")
    return [
        "-" if pd.isna(r.r_heldout) else f"{r.r_heldout:.3f} [{r.r_lo:.2f}, {r.r_hi:.2f}]"
        for r in merged.itertuples()
    ]


def format_verdict(summary: dict) -> str:
    """The verdict (``app.verdict``) as printed after the table: what was found and how far to
    trust it, one sentence a line, so that a run ends on its caveats, not on its top scores."""
    return "\n".join(["", "Verdict:", *(f"- {line}" for line in verdict(summary))])


def format_next_steps(out: str | Path, summary: dict, *, reported: bool) -> str:
    """The last lines of ``sklens run``: what the two numbers are, and where to look next."""
    splits, t = summary["splits"], summary["timings_s"]
    held = (
        f"held-out r: the {splits['confirm']} confirmation examples, with its 95% interval"
        if splits.get("confirm")
        else "no held-out r: the run had no confirmation split (--n-confirm 0)"
    )
    report = f"open {out}/report.html" if reported else f"sklens report {out}"
    return "\n".join([
        "",
        f"metric {summary['metric']}; score: in-sample, on the {splits['select']} selection "
        f"examples that picked the units; {held}.",
        f"Results in {out}/. Next: {report} (the evidence, with figures); "
        f"sklens explain {out} (what each unit tracks, held out); {out}/heldout.csv.",
        f"Timings: {', '.join(f'{k} {v:.0f}s' for k, v in t.items())}.",
    ])  # fmt: skip
