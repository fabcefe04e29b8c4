"""One of the paper's studies end to end, on disjoint splits, with every number in results.json.

Each ``demos/rqN_*.py`` script describes its study (``Study``: task, metric, the paper's
threshold, how to group the KDE) and calls ``main``. The phases, each timed:

1. **data** — the task's examples cut into disjoint splits (``sklens.app.tasks.load_task``): train
   (the prompt, less a held-out *plateau* slice), *select* (the scan that picks the top-K),
   *confirm* (re-measures them) and *causal* (the causal check).
2. **train** — one 20-token prompt per seed, AdamW 3e-3 as the paper, each trained to the plateau
   of its validation loss on the plateau slice (``sklens.train_soft_prompt(..., patience=)``).
3. **scan** — the first seed's prompt scanned on the select split with the paper's metric and a
   max-statistic permutation null (``sklens.scan(..., n_permutations=B)``); the other seeds and
   two baselines (an untrained prompt, the last instruction token) scanned without one.
4. **confirm** — the top-K re-measured on the confirm split (``sklens.confirm_neurons``: held-out
   r with intervals, AUROC for label metrics).
5. **causal** — the top-K ablated on the causal split against scale-matched random sets of the
   same layers (``sklens.causal_check``; two-sided rank p).
6. **stability** — top-K overlap and consensus neurons across seeds
   (``sklens.confirm.stability.compare_scans`` on the scans of phase 3).
7. **figures** — the top neuron's activation KDE by group, the score histogram with the top-10
   threshold and the null, the training curve (``sklens.figures``).
8. **extras** — the study's own questions (RQ3: ``shortcut_check``).

Everything lands in ``--out``: ``results.json`` (numbers, settings, the command, timings),
``summary.md``, CSV tables and figures; ``--docs`` also copies the PNGs to ``docs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from reproduction_text import study_markdown
from sparsity import sparsity
from study_spec import SIZES, Context, Sizes, Study

import sklens
from sklens.app.statistics import causal_summary
from sklens.app.study import versions
from sklens.app.tasks import load_task
from sklens.confirm.stability import compare_scans
from sklens.scanning.metrics import from_spec
from sklens.views import figures

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


class Clock:
    """Wall and CPU time per phase (``timings``, ``cpu``), the wall time printed as each phase
    ends (also with --quiet, which only hides the progress bars: a long run should say where it
    is). CPU time sums the process's threads and does not count time the process was paused."""

    def __init__(self, timings: dict[str, float], cpu: dict[str, float]):
        self.timings, self.cpu = timings, cpu
        self.last, self.last_cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        self.timings[phase] = round(now - self.last, 2)
        self.cpu[phase] = round(now_cpu - self.last_cpu, 2)
        self.last, self.last_cpu = now, now_cpu
        print(f"[{phase}] {self.timings[phase]:.1f} s", flush=True)


def parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"{study.title} (arXiv 2511.21610), end to end")
    p.add_argument("--model", default=sklens.DEFAULT_MODEL, help="default: the embedded model")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=f"demo-out/{study.key}", help="output folder")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--docs", action="store_true", help="copy the PNG figures to docs/")
    p.add_argument("--data", default=None, help="the task's data instead of the built-in")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (≥ 2)")
    p.add_argument("--permutations", type=int, default=None, help="B of the null (≥ 200)")
    p.add_argument("--n-random", type=int, default=None, help="random sets in the causal check")
    p.add_argument("--modes", default=None, help="ablation modes, e.g. zero,mean")
    p.add_argument(
        "--no-causal-accuracy",
        action="store_true",
        help="the causal check measures the loss only, without scoring every choice (RQ3 has "
        "seven per question: about 7x less work)",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue the seeds' training checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    """The size preset with the flags that override it, checked before any model work."""
    sizes = SIZES[args.size]
    overrides: dict[str, Any] = {}
    if args.seeds:
        overrides["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.permutations is not None:
        overrides["permutations"] = args.permutations
    if args.n_random is not None:
        overrides["n_random"] = args.n_random
    if args.modes:
        overrides["modes"] = tuple(args.modes.split(","))
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    sizes = replace(sizes, **overrides)
    if len(set(sizes.seeds)) < 2:
        raise SystemExit(f"--seeds needs at least two distinct seeds, got {sizes.seeds}")
    if sizes.permutations < 200:
        raise SystemExit(f"--permutations must be at least 200, got {sizes.permutations}")
    return sizes


def load_data(ctx: Context) -> None:
    s, study = ctx.sizes, ctx.study
    task = load_task(
        study.task,
        n_train=s.n_train,
        n_val=s.n_select,
        seed=s.seeds[0],
        data=ctx.args.data,
        n_confirm=s.n_confirm,
        n_causal=s.n_causal,
    )
    if study.prepare is not None:
        for split in ("train", "val", "confirm", "causal"):
            setattr(task, split, study.prepare(getattr(task, split)))
    ctx.task = task
    ctx.metric = from_spec(study.metric)


def train(ctx: Context) -> dict[str, Any]:
    """One prompt per seed, each to its plateau on the held-out slice; their training records."""
    s = ctx.sizes
    fit, held = ctx.task.train[: -s.n_plateau], ctx.task.train[-s.n_plateau :]
    records = {}
    for seed in s.seeds:
        checkpoint = ctx.out / f"seed{seed}" / "checkpoint"
        if not ctx.args.resume:  # as `sklens run`: a checkpoint of other settings is an error
            shutil.rmtree(checkpoint, ignore_errors=True)
        prompt = sklens.train_soft_prompt(
            ctx.model,
            fit,
            n_tokens=s.n_tokens,
            lr=s.lr,
            steps=s.max_steps,
            batch_size=s.batch_size,
            seed=seed,
            val_examples=held,
            eval_every=s.eval_every,
            patience=s.patience,
            checkpoint_dir=checkpoint,
            progress=not ctx.args.quiet,
        )
        prompt.save(ctx.out / f"seed{seed}" / "prompt")
        ctx.prompts[seed] = prompt
        history = prompt.history
        records[f"seed{seed}"] = {
            "plateau": sklens.plateau(history, s.patience),
            "first_val_loss": next((h["val_loss"] for h in history if "val_loss" in h), None),
        }
        done = records[f"seed{seed}"]["plateau"]
        print(
            f"[train seed{seed}] {done['steps']} steps (plateau: {done['stopped']}), held-out "
            f"loss {records[f'seed{seed}']['first_val_loss']:.3f} → {done['best_val_loss']:.3f} "
            f"at step {done['best_step']}",
            flush=True,
        )
    return {"n_fit": len(fit), "n_plateau": len(held), "seeds": records}


def scan_all(ctx: Context) -> None:
    """The main scan with its null, the other seeds' scans, and the two baselines."""
    s, args = ctx.sizes, ctx.args
    select = ctx.task.val
    kwargs = {"batch_size": s.batch_size, "progress": not args.quiet}
    main_seed = s.seeds[0]
    ctx.scans[f"seed{main_seed}"] = sklens.scan(
        ctx.model,
        ctx.prompts[main_seed],
        select,
        ctx.metric,
        n_permutations=s.permutations,
        permutation_seed=main_seed,
        **kwargs,
    )
    ctx.scans[f"seed{main_seed}"].save(ctx.out / "scan.safetensors")
    for seed in s.seeds[1:]:
        ctx.scans[f"seed{seed}"] = sklens.scan(
            ctx.model, ctx.prompts[seed], select, ctx.metric, **kwargs
        )
    untrained = sklens.SoftPrompt.init_for(ctx.model, s.n_tokens, seed=main_seed)
    ctx.scans["untrained"] = sklens.scan(ctx.model, untrained, select, ctx.metric, **kwargs)
    ctx.scans["last_token"] = sklens.scan(ctx.model, None, select, ctx.metric, **kwargs)
    ctx.top = ctx.scans[f"seed{main_seed}"].top_k(s.top_k)
    ctx.top.to_csv(ctx.out / "neurons.csv", index=False)


def confirm(ctx: Context) -> dict[str, Any]:
    """The top-K on the confirm split: held-out r (and AUROC for a label) with intervals."""
    table = sklens.confirm_neurons(
        ctx.model,
        ctx.prompts[ctx.sizes.seeds[0]],
        ctx.task.confirm,
        ctx.metric,
        ctx.top,
        measures=ctx.study.measures,
        group_by=ctx.study.group_by,
        seed=ctx.sizes.seeds[0],
        n_boot=ctx.sizes.n_boot,
        batch_size=ctx.sizes.batch_size,
        progress=not ctx.args.quiet,
    )
    table.to_csv(ctx.out / "heldout.csv", index=False)
    first = table.iloc[0]
    out = {
        "n_select": len(ctx.task.val),
        "n_heldout": len(ctx.task.confirm),
        "top_r_select": first.r_select,
        "top_r_heldout": first.r_heldout,
        "top_r_lo": first.r_lo,
        "top_r_hi": first.r_hi,
        "mean_r_select": table.r_select.mean(),
        "mean_r_heldout": table.r_heldout.mean(),
        "n_ci_excludes_0": int(((table.r_lo > 0) | (table.r_hi < 0)).sum()),
        "n_adjusted_ci_excludes_0": int(((table.r_lo_adj > 0) | (table.r_hi_adj < 0)).sum()),
        "n_same_sign": int((np.sign(table.r_select) == np.sign(table.r_heldout)).sum()),
    }
    if "auroc" in table:
        out |= {
            "top_auroc": first.auroc,
            "top_auroc_lo": first.auroc_lo,
            "top_auroc_hi": first.auroc_hi,
            "mean_auroc": table.auroc.mean(),
        }
    return out


def causal(ctx: Context) -> dict[str, Any]:
    """The top-K ablated on the causal split against scale-matched random sets."""
    s = ctx.sizes
    examples = ctx.task.causal
    if ctx.args.no_causal_accuracy:  # loss only: no choice is scored (see --no-causal-accuracy)
        strip = ("choices", "answer")
        examples = [
            sklens.Example(
                e.instruction, e.completion, {k: v for k, v in e.meta.items() if k not in strip}
            )
            for e in examples
        ]
    table = sklens.causal_check(
        ctx.model,
        ctx.prompts[s.seeds[0]],
        examples,
        ctx.top,
        metric=ctx.metric,
        modes=s.modes,
        n_random=s.n_random,
        group_by=ctx.study.group_by,
        match_scale=True,
        reference=ctx.task.confirm,
        seed=s.seeds[0],
        batch_size=s.batch_size,
        progress=not ctx.args.quiet,
    )
    table.to_csv(ctx.out / "causal.csv", index=False)
    return {"modes": causal_summary(table), "choices_scored": not ctx.args.no_causal_accuracy}


def stability(ctx: Context) -> dict[str, Any]:
    """Top-K overlap across seeds, against the baselines, and the consensus neurons."""
    result = compare_scans(ctx.scans, k=ctx.sizes.top_k)
    result.jaccard.to_csv(ctx.out / "stability_jaccard.csv")
    result.consensus.to_csv(ctx.out / "consensus.csv", index=False)
    seeds = [f"seed{s}" for s in ctx.sizes.seeds]
    tops = {n: set(zip(result.tops[n].layer, result.tops[n].neuron, strict=True)) for n in seeds}
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    per_scan = {name: sparsity(scan, k=ctx.sizes.top_k) for name, scan in ctx.scans.items()}
    consensus = result.consensus.copy()
    consensus["in_n_seed_top_k"] = [
        sum((L, i) in tops[n] for n in seeds)
        for L, i in zip(consensus.layer, consensus.neuron, strict=True)
    ]
    return {
        **result.summary(),
        "mean_overlap": float(np.mean([len(tops[a] & tops[b]) for a, b in pairs])),
        "in_all_seeds": len(set.intersection(*tops.values())),
        "jaccard_vs_untrained": float(result.jaccard.loc[seeds[0], "untrained"]),
        "jaccard_vs_last_token": float(result.jaccard.loc[seeds[0], "last_token"]),
        # is the high top-10 threshold made by the trained prompt, or there without it?
        "top_k_threshold": {name: s["top_k_threshold"] for name, s in per_scan.items()},
        "median_abs_score": {name: s["median_abs_score"] for name, s in per_scan.items()},
        "consensus": consensus.to_dict(orient="records"),
    }


def draw(ctx: Context) -> dict[str, str]:
    """The study's figures as PNG (and SVG) under ``out/figures``; returns name → PNG path."""
    study, s = ctx.study, ctx.sizes
    prompt = ctx.prompts[s.seeds[0]]
    first = ctx.top.iloc[0]
    where = f"L{int(first.layer)} N{int(first.neuron)} slot {int(first.slot)}"
    made = {}

    def save(fig: Any, name: str) -> None:
        png, _ = figures.save(fig, ctx.out / "figures" / f"{study.key}_{name}")
        made[name] = str(png.relative_to(ctx.out))

    for split_name, examples in (("select", ctx.task.val), ("heldout", ctx.task.confirm)):
        acts = sklens.slot_activations(
            ctx.model, prompt, examples, ctx.top.head(1), batch_size=s.batch_size
        )[:, 0, int(first.slot)].numpy()
        for grouping in study.groupings:
            labels = [grouping.label(e) for e in examples]
            keep = [i for i, g in enumerate(labels) if g is not None]
            if len({labels[i] for i in keep}) < 2:
                continue
            fig = figures.kde_by_group(
                acts[keep],
                [labels[i] for i in keep],
                title=f"top neuron ({where}) by {grouping.name}, {split_name} split",
            )
            save(fig, f"kde_{grouping.name.replace(' ', '_')}_{split_name}")
    main_scan = ctx.scans[f"seed{s.seeds[0]}"]
    hist = figures.score_histogram(main_scan, k=s.top_k)
    max_95 = float(np.quantile(main_scan.null.max_null().numpy(), 0.95))
    for sign in (1, -1):  # where a neuron passes the max-statistic null (family-wise 0.05)
        hist.axes[0].axvline(
            sign * max_95,
            color="black",
            linestyle=":",
            label=f"null's max |score|, 95% = {max_95:.2f}" if sign == 1 else None,
        )
    hist.axes[0].legend(fontsize=8)
    save(hist, "scores")
    save(figures.training_curve(prompt.history), "training")
    return made


def copy_to_docs(ctx: Context, made: dict[str, str]) -> list[str]:
    """Copy the PNGs to ``docs/`` as ``{key}_{name}.png`` (what docs/reproduction.md shows)."""
    DOCS.mkdir(exist_ok=True)
    copied = []
    for rel in made.values():
        source = ctx.out / rel
        shutil.copyfile(source, DOCS / source.name)
        copied.append(str((DOCS / source.name).relative_to(REPO)))
    return copied


def clean(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and inf to None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def command_line(argv: Sequence[str] | None, script: str) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"demos/{script}", *map(shlex.quote, args)])


def main(study: Study, script: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``study`` with command-line ``argv``; write and return its results."""
    args = parser(study).parse_args(argv)
    sizes = sizes_from(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data == "generated":
        if study.generate is None:
            raise SystemExit(f"{study.key} has no generated pool; drop --data generated")
        total = sizes.n_train + sizes.n_select + sizes.n_confirm + sizes.n_causal
        args.data = str(study.generate(out / "data", total))
    ctx = Context(study, sizes, args, out)
    clock = Clock(ctx.timings, ctx.cpu_timings)
    load_data(ctx)
    clock.lap("data")
    ctx.model = sklens.load_model(args.model, device=args.device)
    clock.lap("load_model")
    results: dict[str, Any] = {
        "study": study.key,
        "title": study.title,
        "size": args.size,
        "command": command_line(argv, script),
        "paper": {"threshold": study.paper_threshold, "claim": study.paper_claim},
        "model": {
            "name": args.model,
            "n_layers": ctx.model.cfg.n_layers,
            "d_mlp": ctx.model.cfg.d_mlp,
            "device": args.device,
        },
        "metric": study.metric,
        "data": {
            "task": study.task,
            "source": ctx.task.source,
            "hashes": {
                split: sklens.data.data_hash(getattr(ctx.task, split))
                for split in ("train", "val", "confirm", "causal")
            },
            "note": study.data_note,
            "splits": {
                name: len(getattr(ctx.task, attr))
                for name, attr in (
                    ("train", "train"),
                    ("select", "val"),
                    ("confirm", "confirm"),
                    ("causal", "causal"),
                )
            },
        },
        "settings": asdict(sizes),
    }
    results["training"] = train(ctx)
    clock.lap("train")
    scan_all(ctx)
    results["top_neurons"] = ctx.top.to_dict(orient="records")
    results["sparsity"] = sparsity(
        ctx.scans[f"seed{sizes.seeds[0]}"], k=sizes.top_k, paper_threshold=study.paper_threshold
    )
    clock.lap("scan")
    results["held_out"] = confirm(ctx)
    clock.lap("confirm")
    results["causal"] = causal(ctx)
    clock.lap("causal")
    results["stability"] = stability(ctx)
    clock.lap("stability")
    made = draw(ctx)
    results["figures"] = made
    if args.docs:
        results["docs_figures"] = copy_to_docs(ctx, made)
    clock.lap("figures")
    if study.extras is not None:
        results[study.key] = study.extras(ctx)
        clock.lap("extras")
    results["timings_s"] = ctx.timings
    results["cpu_s"] = ctx.cpu_timings
    results["versions"] = versions()
    results = clean(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "summary.md").write_text(study_markdown(results))
    print(f"results in {out}/results.json and {out}/summary.md")
    return results
