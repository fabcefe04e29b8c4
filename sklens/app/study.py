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
``heldout.csv`` (the confirmation), ``explanations.csv`` (each top neuron's candidate explanations
ranked on the confirmation split, ``sklens.explain``), ``causal.csv``, ``steering.csv`` (with
``--steering``), ``summary.json`` (settings, splits, versions, data hashes, training plateau,
timings) and ``manifest.json`` (the fingerprint of each stage and the sha256 of every file). A run writes into
a staging directory beside ``out`` and replaces ``out`` as a whole when it has finished, under a
lock (``sklens.app.rundir``); with ``resume=True`` a stage's earlier work (from a failed or killed
run, or from the finished one) is reused only when its fingerprint matches.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sklens import validate
from sklens.app import rundir
from sklens.app.attribution_stage import attribution_stage
from sklens.app.report import read_summary
from sklens.app.statistics import causal_summary, run_statistics
from sklens.app.tasks import load_task, study_site, training_kwargs
from sklens.atomic import write_csv, write_text
from sklens.causal.check import causal_check
from sklens.causal.steering import steering_curve
from sklens.confirm.held_out import read_neurons
from sklens.data.example import data_hash
from sklens.explanation.evidence import collect_evidence
from sklens.models.layout import linear_layout
from sklens.models.load import load_model, resolve_backend
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.prompt.training import plateau, train_soft_prompt
from sklens.scanning.metrics import from_spec
from sklens.scanning.result import Scan
from sklens.scanning.scan import resolve_layers, scan
from sklens.units.sites import resolve_site
from sklens.version import __version__
from sklens.vocabulary import StudyConfig

logger = logging.getLogger("sklens")


# StudyConfig fields that do not change a stage's output. Every other field, including any added
# later, is taken to change it, so a new setting can never let stale work be reused. The device
# only says where the work runs: a run may be resumed on another one.
_AFTER_SCAN = {"top_k", "n_extremal", "reduce", "ablate", "ablate_modes", "n_random", "n_causal"}
_AFTER_SCAN |= {"steering", "attribute"}
_AFTER_SCAN |= {"match_scale", "n_confirm", "seeds", "measures", "covariates"}
_NOT_IN = {
    "training": _AFTER_SCAN
    | {"metric", "permutations", "permutation_groups", "mi_bins", "site", "device"},
    "scan": _AFTER_SCAN | {"device"},
    "results": {"device"},
}


def stage_settings(
    config: StudyConfig, metric: str, task: Any, site: str = "mlp"
) -> dict[str, dict[str, Any]]:
    """What determines each stage's output: its settings and its inputs' fingerprints (``site``:
    the site's name, which for SAEs carries a hash of their weights)."""
    fields = {**asdict(config), "metric": metric, "sklens version": __version__}
    training = {k: v for k, v in fields.items() if k not in _NOT_IN["training"]}
    training |= {"train data": data_hash(task.train), "validation data": data_hash(task.val)}
    scan = {k: v for k, v in fields.items() if k not in _NOT_IN["scan"]}
    scan |= {
        "trained prompt": rundir.fingerprint(training),
        "validation data": data_hash(task.val),
        "site unit": site,
    }
    results = {k: v for k, v in fields.items() if k not in _NOT_IN["results"]}
    results |= {"scan": rundir.fingerprint(scan)}
    return {"training": training, "scan": scan, "results": results}


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result."""
    found = {"sklens": __version__}
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


def group_field(config: StudyConfig, task: Any) -> str | None:
    """The meta field the report groups activations by: the label metric's field, else the
    task's grouping field."""
    metric = config.metric or task.default_metric or ""
    if metric.startswith("label:"):
        return metric[len("label:") :].partition("=")[0]
    return task.group_by


# Written after the scan, every run anew: what an earlier attempt left is removed first, so a
# table that this run's settings did not ask for can never end up in its directory.
_RESULT_FILES = sorted(
    rundir.RESULT_NAMES - {"checkpoint", "prompt", "scan.safetensors", rundir.MANIFEST}
)


def study_task(config: StudyConfig) -> Any:
    """The task data of a study, cut into its disjoint splits."""
    return load_task(
        config.task,
        n_train=config.n_train,
        n_val=config.n_val,
        seed=config.seed,
        data=config.data,
        n_confirm=config.n_confirm,
        n_causal=config.n_causal if config.ablate or config.steering or config.attribute else 0,
    )


@dataclass
class FinishedRun:
    """A finished run reopened to go on from it: its settings, its task's splits (the same
    examples, from the same seed), its model, trained prompt and top-K neurons."""

    config: StudyConfig
    task: Any
    model: Any
    prompt: SoftPrompt
    neurons: pd.DataFrame


def open_run(run_dir: str | Path) -> FinishedRun:
    """Reload a finished ``sklens run``: the model and prompt it trained, the top-K it wrote,
    and its splits, so the examples no split used (``task.rest``) stay unused."""
    run = Path(run_dir)
    _, config = read_summary(run)
    rundir.check_consistent(run)  # an edited or mixed run directory is refused, as by report
    model = load_model(config.model, backend=config.backend, device=config.device)
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

    Every setting is checked first (``sklens.validate``), and against the task's examples before
    the model loads, so a bad one fails in seconds instead of after training. ``out`` is replaced
    as a whole when the run has finished; until then the previous results stay as they were.
    With ``resume`` the training, the scan or both are reused from a failed or killed run, or from
    the finished one, when the settings that determine them are the same.

    Args:
        config: every setting of the study (``StudyConfig``; the ``sklens run`` flags).
        out: the run directory (created; refused if it holds files that are not a run's).
        resume: reuse the stages of an earlier run whose fingerprints match.
        progress: show tqdm bars.

    Returns:
        The summary also written to ``out/summary.json``.
    """
    validate.study(config)
    # a finished run creates it; resolved, so that "." and a symlink name the real directory
    final = validate.output_dir(out, create=False).resolve()
    with rundir.staged(final, resume=resume) as staging:
        return _study(config, staging, final, resume=resume, progress=progress)


def _study(
    config: StudyConfig, out: Path, final: Path, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """The study itself, written into the staging directory ``out`` (see ``run_study``)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    # the backend "auto" picks is fingerprinted, so a run resumes whichever way it was asked for
    config = replace(config, backend=resolve_backend(config.model, config.backend))
    task = study_task(config)
    fit, plateau_kwargs = training_kwargs(config, task)
    metric_spec = validate.study_data(config, task)
    metric = from_spec(metric_spec)
    for examples in (task.val, task.confirm, task.causal):  # e.g. choices for choice_confidence
        if examples:
            metric.check(examples)
    site = study_site(config.site)
    stages = stage_settings(config, metric_spec, task, site.name)
    lap("data")
    model = load_model(config.model, backend=config.backend, device=config.device)
    bound = resolve_site(site, model)  # the hook, its position axis, an SAE's width and layer,
    bound.check_layers(resolve_layers(model, bound.layers_in(model) or None), model)  # pre-training
    lap("load_model")
    with linear_layout(model):  # every phase's passes read the weights without copying them
        rundir.prepare(
            out, final, "training", stages["training"], ["checkpoint", "prompt"], resume=resume
        )
        prompt = train_soft_prompt(
            model,
            fit,
            n_tokens=config.n_tokens,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=config.seed,
            checkpoint_dir=out / "checkpoint",
            progress=progress,
            **plateau_kwargs,
        )
        prompt.save(out / "prompt")
        lap("train")
        scan_path = out / "scan.safetensors"
        result = None
        reused = rundir.prepare(out, final, "scan", stages["scan"], [scan_path.name], resume=resume)
        if reused and scan_path.exists():
            try:
                result = Scan.load(scan_path)
            except ValueError as err:
                logger.warning("%s; scanning again", err)
        if result is None:
            result = scan(
                model,
                prompt,
                task.val,
                metric,
                batch_size=config.batch_size,
                n_permutations=config.permutations,
                permutation_groups=config.permutation_groups,
                permutation_seed=config.seed,
                n_extremal=config.n_extremal,
                mi_bins=config.mi_bins,
                site=site,
                progress=progress,
            )
            result.save(scan_path)
        lap("scan")
        rundir.prepare(out, final, "results", stages["results"], _RESULT_FILES, resume=False)
        neurons = result.top_k(config.top_k, reduce=config.reduce)
        write_csv(neurons, out / "neurons.csv")
        confirmed = spread = None
        if config.n_confirm > 0:  # one pass: the held-out statistics and the evidence's figure
            confirmed = read_neurons(
                model,
                prompt,
                task.confirm,
                neurons,
                metric,
                batch_size=config.batch_size,
                progress=progress,
            )
            spread = (
                task.confirm,
                confirmed[0],
                f"the confirmation split (held out, n={len(task.confirm)})",
            )
            lap("confirm")
        kept = (
            result
            if result.extremes is not None and result.extremes.n >= config.n_extremal
            else None
        )
        evidence, examples = collect_evidence(
            model,
            prompt,
            task.val,
            neurons,
            n=config.n_extremal,
            group_field=group_field(config, task),
            batch_size=config.batch_size,
            kept=kept,
            spread=spread,
        )
        write_csv(examples, out / "examples.csv")
        evidence.save(out / "evidence.json")
        lap("examples")
        controls = {  # the causal check and the steering curve edit against the same random sets
            "metric": metric,
            "n_random": config.n_random,
            "match_scale": config.match_scale,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "progress": progress,
        }
        if config.ablate:
            causal = causal_check(
                model,
                prompt,
                task.causal,
                neurons,
                modes=tuple(config.ablate_modes.split(",")),
                group_by=task.group_by,
                **controls,
            )
            write_csv(causal, out / "causal.csv")
            lap("causal")
        attributed = None
        if config.attribute:
            attributed = attribution_stage(config, out, model, prompt, task, result, progress)
            lap("attribute")
        if config.steering:
            curve = steering_curve(
                model,
                prompt,
                task.causal,
                neurons,
                factors=[float(f) for f in validate.items(config.steering)],
                **controls,
            )
            write_csv(curve, out / "steering.csv")
            lap("steering")
        extras = run_statistics(
            config, out, model, prompt, task, metric, result, neurons, confirmed, progress, lap
        )
    values = result.metric_values
    summary = {
        "config": asdict(config),
        "metric": metric.name,
        "versions": versions(),
        "data": {
            "task": task.name,
            "source": task.source,
            "n_train": len(task.train),
            "n_val": len(task.val),
            "train_hash": data_hash(task.train),
            "val_hash": data_hash(task.val),
        },
        "splits": {
            "train": len(fit),
            "plateau": len(plateau_kwargs.get("val_examples", [])),
            "select": len(task.val),
            "confirm": len(task.confirm),
            "causal": len(task.causal),
            "in_sample": "neurons.csv (corr, score, corr_min, corr_max, p_fwer, p_neuron, q_bh), "
            "examples.csv and significance are computed on the selection set",
        },
        "model": {
            "name": model.cfg.model_name,
            "n_layers": model.cfg.n_layers,
            "d_mlp": model.cfg.d_mlp,
            "d_model": model.cfg.d_model,
            "site": result.settings.site,
            "units_per_layer": result.settings.n_units,
        },
        "training": {
            "first": prompt.history[0] if prompt.history else None,
            "last": prompt.history[-1] if prompt.history else None,
            "max_steps": config.steps,
            **({"plateau": plateau(prompt.history, config.patience)} if config.patience else {}),
            "kept_step": prompt.config.kept_step,  # the best held-out loss's prompt, not the last
        },
        "metric_values": {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        },
        "top_neurons": neurons.to_dict(orient="records"),
        "causal": causal_summary(causal) if config.ablate else None,
        "attribution": attributed,
        **extras,
        "fingerprints": {stage: rundir.fingerprint(settings) for stage, settings in stages.items()},
        "timings_s": timings,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    manifest = rundir.read_manifest(out)
    rundir.write_manifest(out, {**manifest, "files": rundir.file_hashes(out)})
    return summary
