"""One self-contained ``report.html`` for a run directory, readable with no network.

Its first screen is what a reader needs first: what was run, the verdict (what was found and
how far to trust it, ``app.verdict``) and the top-neuron table. Then the training curve, the
score histogram (with the permutation null if any), where high-|r| neurons sit, each later
stage's section, for each top neuron its activation density by group, its extremal examples and
a circuitsvis view of its token-level activations, and last the settings. Figures are embedded
as PNG data URIs; the circuitsvis bundle is embedded once.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from sklens import validate
from sklens.app import rundir
from sklens.app.config import StudyConfig
from sklens.app.verdict import (
    attribution_sentence,
    basis_text,
    causal_sentence,
    contrast_sentence,
    selection_stability_text,
    verdict,
)
from sklens.atomic import write_text
from sklens.causal.attribution import Attribution
from sklens.explanation.evidence import NeuronEvidence
from sklens.explanation.explain import summary_lines
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.result import Scan
from sklens.units.sites import unit_label, unit_slot_label
from sklens.views import figures
from sklens.views.viz import text_view

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}img{max-width:100%}section.neuron{border-top:2px solid #ddd;margin-top:2em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}code{background:#f6f6f6;padding:1px 3px}
"""


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", escape=True)


def _training_line(summary: dict[str, Any]) -> str:
    """One sentence on how long the prompt trained and why it stopped."""
    training = summary.get("training") or {}
    info = training.get("plateau")
    if not info:
        return f"The prompt trained for {training.get('max_steps')} steps (no plateau rule)."
    how = (
        f"stopped on a plateau after {info['steps']} steps"
        if info["stopped"]
        else f"reached the maximum of {training.get('max_steps')} steps before a plateau"
    )
    return (
        f"The prompt {how} (patience {info['patience']} evaluations); best plateau-slice "
        f"loss {info['best_val_loss']:.4f} at step {info['best_step']}, last "
        f"{info['last_val_loss']:.4f}."
    )


def build_report(run_dir: str | os.PathLike, *, n: int = 5) -> Path:
    """Write ``RUN_DIR/report.html`` from the outputs of ``sklens run`` and return its path.

    Everything comes from the run's files (``evidence.json`` holds what the views draw), so no
    model or task is loaded; ``n`` (at most the run's ``--n-extremal``) examples per direction
    are shown. Refuses a directory whose files are not the ones its manifest lists (files from
    different runs, or changed since), and one that a run is writing at the moment.
    """
    run = Path(run_dir)
    rundir.read_summary(run)  # a missing, damaged or foreign summary names itself and the fix
    validate.output_dir(run, "the run directory")  # before the model loads: report.html goes here
    with rundir.locked(run, "sklens report"):
        return _build(run, n)


def _attribution_section(
    run: Path, result: Scan, summary: dict[str, Any], config: StudyConfig
) -> list[str]:
    """The attribution panel: |score| against |effect| for every unit, the joined table."""
    found = Attribution.load(run / "attribution.safetensors")
    joined = pd.read_csv(run / "joined.csv")
    score = result.scores(config.select.reduce)[0].abs()
    effect = found.effect.abs().amax(-1)  # over the scan's layers (joined_table checks it)
    index = {layer: i for i, layer in enumerate(result.layers)}
    marked = [
        (float(score[index[r.layer], r.unit]), float(effect[index[r.layer], r.unit]),
         unit_label(result.settings.site, r.layer, r.unit))
        for r in joined.itertuples()
    ]  # fmt: skip
    s = summary["attribution"]
    return [
        f"<h3>Attribution: which units move the loss ({html.escape(s['examples'])}, "
        f"{s['method']})</h3>",
        f"<p>{html.escape(attribution_sentence(s, config.select.top_k))}</p>",
        _png(figures.predictive_vs_causal(score.numpy(), effect.numpy(), marked)),
        _table(joined),
    ]


def _build(run: Path, n: int) -> Path:
    """Write ``report.html`` from the run's files, section by section (``build_report`` holds
    the run's lock)."""
    rundir.check_consistent(run)
    summary, config = rundir.read_summary(run)
    if not (run / "evidence.json").exists():
        raise rundir.RunDirError(
            f"{run} has no evidence.json, which the report draws from (the run was written by "
            f"an older sklens); run `sklens run --out {run}` again"
        )
    evidence = NeuronEvidence.load(run / "evidence.json")
    prompt = SoftPrompt.load(run / "prompt")
    result = Scan.load(run / "scan.safetensors")
    neurons = pd.read_csv(run / "neurons.csv")
    extremal = pd.read_csv(run / "examples.csv", dtype={"instruction": str, "completion": str})
    splits = summary.get("splits", {})

    parts = _first_screen(summary, config, neurons)
    parts += _figures(summary, config, prompt, result)
    parts += _summary_tables(summary, splits)
    parts += _run_tables(run, config, splits)
    if (run / "attribution.safetensors").exists():
        parts += _attribution_section(run, result, summary, config)
    if (run / "causal.csv").exists():
        parts += _causal_section(run, summary, config, splits)
    if (run / "steering.csv").exists():
        parts += _steering_section(pd.read_csv(run / "steering.csv"), splits)
    if (run / "contrast.csv").exists():
        parts += _contrast_section(pd.read_csv(run / "contrast.csv"), summary, config)
    parts += _selection_section(run, summary)
    explained = (
        pd.read_csv(run / "explanations.csv") if (run / "explanations.csv").exists() else None
    )
    if explained is not None:
        parts += _explanations_section(explained, neurons, splits)
    bundle = None
    for j, row in enumerate(neurons.itertuples()):
        script, section = _neuron_section(evidence, j, row, extremal, explained, n)
        bundle = bundle or script
        parts += section
    parts += _settings(summary)
    head = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>sklens report</title>"
        f"<style>{STYLE}</style>"
    )
    scripts = f"<script>{bundle}</script>" if bundle else ""
    document = f"{head}{scripts}</head><body>{''.join(parts)}</body></html>"
    path = run / "report.html"
    write_text(path, document)
    return path


def _first_screen(summary: dict[str, Any], config: StudyConfig, neurons: pd.DataFrame) -> list[str]:
    """What a reader sees first: the title, what was run, the verdict (what was found and how far
    to trust it, ``app.verdict``) and the top-unit table."""
    return [
        f"<h1>sklens report: {html.escape(config.task)}</h1>",
        f"<p>Model <code>{html.escape(str(summary['model']['name']))}</code>, metric "
        f"<code>{html.escape(summary['metric'])}</code>, {summary['data']['n_val']} validation "
        f"examples, {config.train.n_slots} soft tokens, ranking rule "
        f"<code>{config.select.reduce}</code>.</p>",
        "<h2>Verdict</h2><ul class='verdict'>",
        *(f"<li>{html.escape(line)}</li>" for line in verdict(summary)),
        "</ul>",
        f"<h2>Top neurons (in-sample: the selection set of {summary['data']['n_val']} examples)</h2>",
        "<p>r, score and permutation p-values come from the examples that selected these "
        "neurons, so they are inflated by the selection (winner's curse); the held-out "
        "confirmation below is the honest estimate.</p>",
        _table(neurons),
    ]


def _figures(
    summary: dict[str, Any], config: StudyConfig, prompt: SoftPrompt, result: Scan
) -> list[str]:
    """The training curve, the score histogram and where high-|r| units sit, and how the
    training stopped."""
    return [
        "<h2>Training and scores</h2><div class='grid'>",
        _png(figures.training_curve(prompt.history)),
        _png(figures.score_histogram(result, k=config.select.top_k, reduce=config.select.reduce)),
        _png(figures.layer_position_heatmap(result)),
        "</div>",
        f"<p>{html.escape(_training_line(summary))}</p>",
    ]


def _settings(summary: dict[str, Any]) -> list[str]:
    """Every setting of the run, last: what a reader checks after reading the findings."""
    frame = pd.DataFrame([summary["config"]]).T.reset_index()
    return ["<h2>Settings</h2>", _table(frame.set_axis(["setting", "value"], axis=1))]


def _summary_tables(summary: dict[str, Any], splits: dict[str, Any]) -> list[str]:
    """The summary's significance, mutual-information, held-out and stability numbers, each
    stage's that ran."""
    parts = []
    for key, title in (
        ("significance", "Significance (permutation null; in-sample)"),
        ("mutual_information", "Mutual information beside Pearson (top-K overlap; in-sample)"),
        ("held_out", f"Held-out confirmation (confirm split, {splits.get('confirm')} examples)"),
        ("stability", "Seed stability"),
    ):
        if summary.get(key):
            parts += [f"<h2>{title}</h2>", _table(pd.DataFrame([summary[key]]))]
    return parts


def _run_tables(run: Path, config: StudyConfig, splits: dict[str, Any]) -> list[str]:
    """The tables the run's later stages wrote (mutual information, held-out, causal check,
    consensus), each that is there."""
    parts = []
    for name, title in (
        ("neurons_mi.csv", "Top neurons by mutual information (in-sample)"),
        ("heldout.csv", "Held-out r (95% per neuron; _adj: Bonferroni over the K) and measures"),
        ("consensus.csv", "Consensus neurons across seeds"),
    ):
        # A run replaces the whole directory and the manifest was checked above, so a table that
        # is here was written by this run's settings.
        if (run / name).exists():
            parts += [f"<h3>{title}</h3>", _table(pd.read_csv(run / name))]
    return parts


def _causal_section(
    run: Path, summary: dict[str, Any], config: StudyConfig, splits: dict[str, Any]
) -> list[str]:
    """The causal check read out per mode (what the test could detect, what the data exclude,
    the positive control), its selected and positive rows, and the dose-response where run."""
    matched = "scale- and score-matched" if config.causal.match_score else "scale-matched"
    if not config.causal.match_scale:
        matched = "score-matched" if config.causal.match_score else "unmatched"
    parts = [
        f"<h3>Causal check on a third split ({splits.get('causal')} examples): the top-K "
        f"against {config.causal.n_random} random sets of the same layers ({matched})</h3>"
    ]
    for row in summary.get("causal") or []:
        parts.append(f"<p>{html.escape(causal_sentence(row))}</p>")
    table = pd.read_csv(run / "causal.csv")
    parts.append(_table(table[~table.set.str.startswith("random_")]))
    if (run / "dose_response.csv").exists():
        dose = pd.read_csv(run / "dose_response.csv")
        parts += ["<h3>Dose-response: the top-k ablated for each k</h3>"]
        parts.append(_png(figures.dose_response(dose)))
    return parts


def _steering_section(curve: pd.DataFrame, splits: dict[str, Any]) -> list[str]:
    """The steering curves: each measure the run has, against the scaling factor."""
    return [
        f"<h3>Steering curve on the causal split ({splits.get('causal')} examples): the "
        "top-K scaled by each factor, beside random sets of the same layers</h3>",
        "<div class='grid'>",
        *(
            _png(figures.steering(curve, measure))
            for measure in ("loss", "metric", "accuracy")
            if curve[f"d_{measure}"].notna().any()
        ),
        "</div>",
    ]


def _contrast_section(
    table: pd.DataFrame, summary: dict[str, Any], config: StudyConfig
) -> list[str]:
    """The prompt contrast, per baseline: every unit's score under the trained prompt against
    the baseline's, the top-K by |diff| named and tabled, and the summary's numbers."""
    k = config.select.top_k
    parts = [
        "<h3>Prompt specificity: each unit under the trained prompt against a baseline (the "
        "selection split, in-sample; paired permutation test per unit)</h3>"
    ]
    for name, part in table.groupby("baseline", sort=False):
        s = summary["contrast"][name]
        top = part.loc[part["diff"].abs().sort_values(ascending=False).index[:k]]
        marked = [
            (r.score_trained, r.score_baseline, unit_label(r.site, r.layer, r.unit))
            for r in top.itertuples()
        ]
        parts += [
            f"<h4>{html.escape(str(name))}: {html.escape(s['compared'])}</h4>",
            f"<p>{html.escape(contrast_sentence(s))}</p>",
            _png(figures.contrast_scatter(
                part.score_trained.to_numpy(), part.score_baseline.to_numpy(), marked, name=name
            )),
            _table(top.drop(columns=["baseline"])),
        ]  # fmt: skip
    return parts


def _selection_section(run: Path, summary: dict[str, Any]) -> list[str]:
    """The checks of the selection that ran: each top unit's stay share over bootstrap
    resamples of the selection split (``--bootstrap``) and the basis test on the confirmation
    split (``--basis-rotations``), each table under a sentence of its summary's numbers."""
    parts = []
    for file, key, text in (
        ("selection_stability.csv", "selection_stability", selection_stability_text),
        ("basis.csv", "basis_test", basis_text),
    ):
        if (run / file).exists():
            title, sentence = text(summary[key])
            parts += [
                f"<h3>{html.escape(title)}</h3>",
                f"<p>{html.escape(sentence)}</p>",
                _table(pd.read_csv(run / file)),
            ]
    return parts


def _explanations_section(
    explained: pd.DataFrame, neurons: pd.DataFrame, splits: dict[str, Any]
) -> list[str]:
    """The explanations, one line per top neuron: its best hypothesis if one passes
    (``summary_lines``)."""
    lines = summary_lines(explained, neurons)
    return [
        f"<h3>Explanations (ranked on the confirm split, {splits.get('confirm')} examples; "
        "Benjamini–Hochberg q over every neuron and hypothesis)</h3>",
        f"<pre>{html.escape(chr(10).join(lines))}</pre>",
    ]


def _neuron_section(
    evidence: NeuronEvidence,
    j: int,
    row: Any,
    extremal: pd.DataFrame,
    explained: pd.DataFrame | None,
    n: int,
) -> tuple[str, list[str]]:
    """Top neuron ``j``'s section (``row`` of the top-neuron table): its activation density by
    group, its best explanations, its ``n`` extremal examples each way and their token-level
    view; and the circuitsvis bundle, which the report embeds once."""
    label, group = evidence.labels[j], evidence.group_field
    kde = figures.kde_by_group(
        evidence.at_slot()[:, j],
        [g if group else "all" for g in evidence.groups],
        title=f"{label}  (score {row.score:.3f})",
        xlabel=f"activation at <soft{row.slot}>",
    )
    script, mount = text_view(*evidence.view_data(j, n), [label]).split()
    rows = extremal[(extremal.unit_rank == j) & (extremal["rank"] < n)].drop(
        columns=["unit_rank", "layer", "unit", "slot"]
    )
    return script, [
        f"<section class='neuron'><h3>#{j}: {html.escape(label)}</h3>",
        f"<p>Activation by <code>{html.escape(str(group))}</code> on "
        f"{html.escape(evidence.sample)}:</p>",
        _png(kde),
        *(_neuron_explanations(explained, row) if explained is not None else []),
        "<p>Most and least activating examples of the selection set (in-sample):</p>",
        _table(rows),
        "<p>Token-level activations (most then least activating examples; position 0, "
        "an attention sink, is left out):</p>",
        mount,
        "</section>",
    ]


def _neuron_explanations(explained: pd.DataFrame, row: Any) -> list[str]:
    """The five best-ranked explanations of the neuron of ``row``."""
    label = unit_slot_label(getattr(row, "site", "mlp"), row.layer, row.unit, row.slot)
    return [
        "<p>Its five best-ranked explanations on the confirm split (held out):</p>",
        _table(explained[explained.label == label].head(5)),
    ]
