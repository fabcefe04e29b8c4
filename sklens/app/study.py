"""One study end to end: train a prompt, scan, confirm, and write everything a researcher reuses.

No double dipping: the task is cut into disjoint splits. The prompt trains on ``train`` (less a
held-out ``plateau`` slice that decides when training has plateaued); the scan of ``val`` (the
*selection* set) picks the top-K neurons; ``confirm`` re-measures them (held-out r with
intervals, AUROC, the other measures); ``causal`` is used by the causal check. Numbers computed on
the selection set — the top-K table's r and score, the permutation p-values, the extremal
examples — are **in-sample** and say so in the summary and the report.

The output directory holds ``prompt/`` (safetensors + JSON), ``checkpoint/`` (resumable training),
``scan.safetensors``, ``neurons.csv`` (the top-K), ``examples.csv`` (each top neuron's most and
least activating selection-set examples, kept by the scan itself: no second pass),
``evidence.json`` (what the report draws: each top neuron's activations on the confirmation split,
read in the confirmation's one pass, and its extremal examples' token-level activations),
``heldout.csv`` (the confirmation), ``contrast.csv`` (with ``--contrast``: every unit under the
trained prompt against a baseline, ``sklens.contrast``), ``selection_stability.csv`` (with
``--bootstrap``: how often resamples of the selection split keep each top unit,
``sklens.selection_stability``), ``basis.csv`` (with ``--basis-rotations``: each top unit against
random bases of its layer on the confirmation split, ``sklens.basis_test``), ``explanations.csv``
(each top neuron's candidate explanations ranked on the confirmation split, ``sklens.explain``),
``causal.csv``, ``steering.csv`` (with ``--steering``), ``summary.json`` (settings, splits,
versions, data hashes, training plateau, timings) and ``manifest.json`` (the fingerprint of each
stage and the sha256 of every file). A run writes into a staging directory beside ``out`` and
replaces ``out`` as a whole when it has finished, under a lock (``sklens.app.rundir``); with
``resume=True`` a stage's earlier work (from a failed or killed run, or from the finished one) is
reused only when its fingerprint matches.

The study is a list of stages (``PIPELINE``), each a function of the run in progress
(``StudyRun``) that reads what earlier stages made and writes its named files. Three are
fingerprinted (``StudyConfig.stage_settings``): ``training`` (``checkpoint/``, ``prompt/``),
``scan`` (``scan.safetensors``) and ``results`` (every later file, written anew each time).
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sklens import validate
from sklens.app import rundir
from sklens.app.causal_stage import causal_stage
from sklens.app.config import StudyConfig
from sklens.app.contrast_stage import contrast_stage
from sklens.app.cpu_ledger import CpuLedger
from sklens.app.data_checks import study_data
from sklens.app.run_state import StudyRun
from sklens.app.selection_stage import basis_stage, selection_stability_stage
from sklens.app.statistics import run_statistics
from sklens.app.tasks import TaskData, load_task, study_site, training_kwargs
from sklens.atomic import write_csv, write_text
from sklens.confirm.held_out import read_neurons
from sklens.data.example import data_hash
from sklens.data.format import encode
from sklens.explanation.evidence import collect_evidence
from sklens.models.layout import linear_layout
from sklens.models.load import load_model, resolve_backend
from sklens.models.precision import dtype_name, resolve_dtype
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.prompt.training import plateau, train_soft_prompt
from sklens.scanning.metrics import from_spec
from sklens.scanning.result import Scan
from sklens.scanning.scan import resolve_layers, scan
from sklens.stats.distributed import local_device
from sklens.stats.mutual_info import top_k_overlap
from sklens.units.sites import resolve_site
from sklens.version import __version__, source_commit

logger = logging.getLogger("sklens")


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result, and the commit of sklens's checkout
    (``+dirty`` with uncommitted changes; ``not a checkout`` for an installed wheel)."""
    found = {"sklens": __version__, "sklens commit": source_commit() or "not a checkout"}
    for package in ("torch", "transformer-lens", "transformers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return {
        **found,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
    }


def group_field(config: StudyConfig, task: TaskData) -> str | None:
    """The meta field the report groups activations by: the label metric's field, else the
    task's grouping field."""
    metric = config.scan.metric or task.default_metric or ""
    if metric.startswith("label:"):
        return metric[len("label:") :].partition("=")[0]
    return task.group_by


# Written after the scan, every run anew: what an earlier attempt left is removed first, so a
# table that this run's settings did not ask for can never end up in its directory.
_RESULT_FILES = sorted(
    rundir.RESULT_NAMES
    - {"checkpoint", "prompt", "scan.safetensors", rundir.PARTS, rundir.LEDGER, rundir.MANIFEST}
)


def study_task(config: StudyConfig) -> TaskData:
    """The task data of a study, cut into its disjoint splits."""
    return load_task(
        config.task,
        n_train=config.n_train,
        n_val=config.n_val,
        seed=config.seed,
        data=config.data,
        n_confirm=config.confirm.n_confirm,
        n_causal=config.causal.n_causal if config.causal.uses_causal_split else 0,
        stratify_causal=config.causal.stratify,
        shuffle_label=config.shuffle_label,
    )


@dataclass
class FinishedRun:
    """A finished run reopened to go on from it: its settings, its task's splits (the same
    examples, from the same seed), its model, trained prompt and top-K neurons."""

    config: StudyConfig
    task: TaskData
    model: Model
    prompt: SoftPrompt
    neurons: pd.DataFrame


def open_run(run_dir: str | Path) -> FinishedRun:
    """Reload a finished ``sklens run``: the model and prompt it trained, the top-K it wrote,
    and its splits, so the examples no split used (``task.rest``) stay unused."""
    run = Path(run_dir)
    _, config = rundir.read_summary(run)
    rundir.check_consistent(run)  # an edited or mixed run directory is refused, as by report
    model = load_model(
        config.model, backend=config.backend, device=config.device, dtype=config.dtype
    )
    return FinishedRun(
        config=config,
        task=study_task(config),
        model=model,
        prompt=SoftPrompt.load(run / "prompt", model),
        neurons=pd.read_csv(run / "neurons.csv"),
    )


def run_study(
    config: StudyConfig, out: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run a study into ``out`` and return its summary.

    Every setting was checked when ``config`` was made, and is checked against the task's
    examples before the model loads, so a bad one fails in seconds instead of after training.
    ``out`` is replaced as a whole when the run has finished; until then the previous results
    stay as they were. With ``resume`` the training, the scan or both are reused from a failed or
    killed run, or from the finished one, when the settings that determine them are the same.

    Args:
        config: every setting of the study (``StudyConfig``; the ``sklens run`` flags).
        out: the run directory (created; refused if it holds files that are not a run's).
        resume: reuse the stages of an earlier run whose fingerprints match.
        progress: show tqdm bars.

    Returns:
        The summary also written to ``out/summary.json``.
    """
    if not isinstance(config, StudyConfig):
        raise TypeError(f"config must be a sklens.StudyConfig, got {type(config).__name__}")
    # a finished run creates it; resolved, so that "." and a symlink name the real directory
    final = validate.output_dir(out, create=False).resolve()
    with rundir.staged(final, resume=resume) as staging:
        run = _prepare(config, staging, final, resume=resume, progress=progress)
        try:
            with linear_layout(run.model):  # every stage's passes read the weights without copies
                for stage in PIPELINE:
                    stage(run)
            return _write_summary(run)
        finally:
            run.ledger.stop()


def _prepare(
    config: StudyConfig, out: Path, final: Path, *, resume: bool, progress: bool
) -> StudyRun:
    """The run's data, checked against the settings, then its model (in that order: a bad
    setting fails before the model loads), with the site bound and its layers checked."""
    # the backend "auto" picks is fingerprinted, so a run resumes whichever way it was asked for
    device = local_device(config.device)
    dtype = dtype_name(resolve_dtype(config.dtype, device))
    config = config.resolved(resolve_backend(config.model, config.backend), dtype)
    task = study_task(config)
    fit, plateau_kwargs = training_kwargs(config, task)
    metric_spec = study_data(config, task)
    metric = from_spec(metric_spec)
    for examples in (task.val, task.confirm, task.causal):  # e.g. choices for choice_confidence
        if examples:
            metric.check(examples)
    site = study_site(config.scan.site)
    hashes = {"train": data_hash(task.train), "val": data_hash(task.val)}
    run = StudyRun(
        config=config,
        out=out,
        final=final,
        resume=resume,
        progress=progress,
        task=task,
        fit=fit,
        plateau_kwargs=plateau_kwargs,
        metric_spec=metric_spec,
        metric=metric,
        site=site,
        stages=config.stage_settings(metric_spec, hashes, site.name, __version__),
    )
    run.lap("data")
    run.model = load_model(
        config.model, backend=config.backend, device=config.device, dtype=config.dtype
    )
    bound = resolve_site(site, run.model)  # the hook, its position axis, an SAE's width, layer
    bound.check_layers(resolve_layers(run.model, bound.layers_in(run.model) or None), run.model)
    if "no_prompt" in config.confirm.contrast:  # before training, not when the stage starts
        _check_no_prompt_room(run.model, task.val, config.train.n_slots)
    run.lap("load_model")
    run.ledger = CpuLedger(out, rundir.fingerprint(run.stages), run.cpu_timings)
    return run


def _check_no_prompt_room(model: Model, examples: list, n_slots: int) -> None:
    """The no-prompt contrast reads the last ``n_slots`` positions before the slots: refuse
    examples with fewer, naming the settings that fix it."""
    short = [i for i, e in enumerate(encode(model, examples, 0)) if len(e.prefix) < n_slots]
    if short:
        raise ValueError(
            f"{validate.name('contrast')} no_prompt reads the last {n_slots} positions before the "
            f"slots, but {len(short)} selection example(s) (first: {short[0]}) have fewer; drop "
            f"no_prompt or lower {validate.name('n_slots')}"
        )


def _train(run: StudyRun) -> None:
    """Stage ``training``: the soft prompt, resumed from ``checkpoint/`` where it matches."""
    config, out = run.config, run.out
    rundir.prepare(
        out, run.final, "training", run.stages["training"], ["checkpoint", "prompt"],
        resume=run.resume,
    )  # fmt: skip
    run.prompt = train_soft_prompt(
        run.model,
        run.fit,
        n_slots=config.train.n_slots,
        lr=config.train.lr,
        batch_size=config.batch_size,
        seed=config.seed,
        checkpoint_dir=out / "checkpoint",
        progress=run.progress,
        **run.plateau_kwargs,
    )
    run.prompt.save(out / "prompt")
    run.lap("train")


def _scan(run: StudyRun) -> None:
    """Stage ``scan``: every unit at every slot against the metric on the selection split,
    reused from ``scan.safetensors`` where its fingerprint matches."""
    config, path = run.config, run.out / "scan.safetensors"
    reused = rundir.prepare(
        run.out, run.final, "scan", run.stages["scan"], [path.name], resume=run.resume
    )
    if reused and path.exists():
        try:
            run.result = Scan.load(path)
        except ValueError as err:
            logger.warning("%s; scanning again", err)
    if run.result is None:
        run.result = scan(
            run.model,
            run.prompt,
            run.task.val,
            run.metric,
            batch_size=config.batch_size,
            n_permutations=config.scan.permutations,
            permutation_groups=config.scan.permutation_groups,
            permutation_seed=config.seed,
            n_extremal=config.select.n_extremal,
            mi_bins=config.scan.mi_bins,
            site=run.site,
            progress=run.progress,
        )
        run.result.save(path)
    run.lap("scan")


def _select(run: StudyRun) -> None:
    """Stage ``results`` begins: every later file is written anew; the top-K table."""
    select = run.config.select
    rundir.prepare(run.out, run.final, "results", run.stages["results"], _RESULT_FILES,
                   resume=False)  # fmt: skip
    # the pieces of a killed attempt with the same results settings are kept (``run.parts``)
    rundir.prepare(run.out, run.final, rundir.PARTS, run.stages["results"], [rundir.PARTS],
                   resume=run.resume)  # fmt: skip
    run.neurons = run.result.top_k(select.top_k, reduce=select.reduce)
    write_csv(run.neurons, run.out / "neurons.csv")
    # the other ranking rule beside it: the signed max depends on which class is coded 1
    other = "absmax" if select.reduce == "max" else "max"
    beside = run.result.top_k(select.top_k, reduce=other)
    write_csv(beside, run.out / f"neurons_{other}.csv")
    overlap = top_k_overlap(run.neurons, beside)
    run.summary["selection"] = {
        "rule": select.reduce,
        "other_rule": other,
        "shared_with_other_rule": len(overlap["shared"]),
        "jaccard_with_other_rule": overlap["jaccard"],
    }


def _confirm(run: StudyRun) -> None:
    """The top-K on the confirmation split, in one pass: the held-out statistics and the
    evidence's figure read the same activations."""
    if run.config.confirm.n_confirm == 0:
        return
    run.confirmed = read_neurons(
        run.model,
        run.prompt,
        run.task.confirm,
        run.neurons,
        run.metric,
        batch_size=run.batch_size,
        progress=run.progress,
    )
    run.lap("confirm")


def _evidence(run: StudyRun) -> None:
    """``examples.csv`` and ``evidence.json``: each top unit's extremal selection examples (kept
    by the scan itself where it kept enough) and its spread on the confirmation split."""
    n = run.config.select.n_extremal
    extremes = run.result.extremes
    kept = run.result if extremes is not None and extremes.n >= n else None
    spread = None
    if run.confirmed is not None:
        where = f"the confirmation split (held out, n={len(run.task.confirm)})"
        spread = (run.task.confirm, run.confirmed[0], where)
    evidence, examples = collect_evidence(
        run.model,
        run.prompt,
        run.task.val,
        run.neurons,
        n=n,
        group_field=group_field(run.config, run.task),
        batch_size=run.batch_size,
        kept=kept,
        spread=spread,
    )
    write_csv(examples, run.out / "examples.csv")
    evidence.save(run.out / "evidence.json")
    run.lap("examples")


def _statistics(run: StudyRun) -> None:
    """Significance, mutual information, held-out measures, explanations, seed stability."""
    run.summary["extras"] = run_statistics(run)


def _contrast(run: StudyRun) -> None:
    """With ``--contrast``: every unit under the trained prompt against each baseline, on the
    selection split with the scan's metric values (``contrast.csv``)."""
    if run.config.confirm.contrast:
        run.summary["contrast"] = contrast_stage(run)
        run.lap("contrast")


# The study, in order. Each stage reads what the earlier ones left on ``run`` and writes its files.
PIPELINE: tuple[Callable[[StudyRun], None], ...] = (
    _train,
    _scan,
    _select,
    _confirm,
    _evidence,
    causal_stage,
    _statistics,
    _contrast,
    selection_stability_stage,
    basis_stage,
)


def _write_summary(run: StudyRun) -> dict[str, Any]:
    """``summary.json`` (settings, splits, versions, data hashes, training, timings) and the
    manifest's file hashes; returns the summary."""
    config, task, values = run.config, run.task, run.result.metric_values
    prompt, model = run.prompt, run.model
    extras = run.summary.pop("extras")
    summary = {
        "config": asdict(config),
        "metric": run.metric.name,
        "versions": versions(),
        "data": _data_summary(task),
        "splits": _splits_summary(run),
        "model": {
            "name": model.cfg.model_name,
            "n_layers": model.cfg.n_layers,
            "d_mlp": model.cfg.d_mlp,
            "d_model": model.cfg.d_model,
            "dtype": str(model.cfg.dtype).removeprefix("torch."),
            "device": str(model.cfg.device),
            "site": run.result.settings.site,
            "units_per_layer": run.result.settings.n_units,
        },
        "training": {
            "first": prompt.history[0] if prompt.history else None,
            "last": prompt.history[-1] if prompt.history else None,
            "max_steps": config.train.steps,
            **(
                {"plateau": plateau(prompt.history, config.train.patience)}
                if config.train.patience
                else {}
            ),
            "kept_step": prompt.config.kept_step,  # the best held-out loss's prompt, not the last
        },
        "metric_values": {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        },
        "top_neurons": run.neurons.to_dict(orient="records"),
        **run.summary,
        **extras,
        "fingerprints": {stage: rundir.fingerprint(s) for stage, s in run.stages.items()},
        "timings_s": run.timings,
        "cpu_s": run.cpu_timings,
        **run.ledger.summary(),
    }
    write_text(run.out / "summary.json", json.dumps(summary, indent=2, default=str))
    run.ledger.close()
    rundir.finish_parts(run.out)
    manifest = rundir.read_manifest(run.out)
    rundir.write_manifest(run.out, {**manifest, "files": rundir.file_hashes(run.out)})
    return summary


def _data_summary(task: TaskData) -> dict[str, Any]:
    return {
        "task": task.name,
        "source": task.source,
        "n_train": len(task.train),
        "n_val": len(task.val),
        "train_hash": data_hash(task.train),
        "val_hash": data_hash(task.val),
    }


def _splits_summary(run: StudyRun) -> dict[str, Any]:
    task = run.task
    return {
        "train": len(run.fit),
        "plateau": len(run.plateau_kwargs.get("val_examples", [])),
        "select": len(task.val),
        "confirm": len(task.confirm),
        "causal": len(task.causal),
        "in_sample": "neurons.csv (corr, score, corr_min, corr_max, p_fwer, p_unit, q_bh), "
        "examples.csv and significance are computed on the selection set",
    }
