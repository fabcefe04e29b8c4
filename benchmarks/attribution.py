"""Attribution estimators (``sklens.attribute``) against exact patching, and what they cost.

On a model (default: the embedded SmolLM2; ``--model tiny`` for the tiny test model), a soft
prompt trained for a few steps on the task's questions, and N others (``--task arithmetic``:
BigBench arithmetic, 7 choices each; ``--task hans``: HANS-style pairs, entailment or not, for
the multiple-choice ``--metric margin``): every estimator's effects for all units (layer,
neuron, slot), then exact patching (``sklens.causal.attribution_exact.exact_effects``: one unit
ablated at a time) of a stratified sample of units, pooled over the estimators — each
estimator's top ``--n-top`` and ``--n-low`` from the bottom 90% of its ranking, and
``--n-random`` units drawn uniformly and ``--per-layer`` from every layer, these two drawn once
for all estimators. It reports


* Pearson and Spearman r of each estimator's effects with the exact ones over the pooled sample
  (the sample over-weights the top: r says how well the large effects are estimated);
* the largest exact |effect| among the units the estimator ranked in its bottom 90%, beside its
  top unit's: what its ranking may have missed;
* the wall time of each estimator relative to one loss-metric ``sklens.scan`` of the same
  examples, rounds interleaved (``common.interleaved``), the ratio taken within each round.

Results go to ``results/attribution-<date>.md`` with the command, the machine and the versions.
"""

from __future__ import annotations

import datetime
import platform
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import examples, interleaved, parser, ratios, write_results

import sklens
from sklens.app.study import versions
from sklens.causal.attribution_exact import exact_effects


def estimators(spec: str) -> dict[str, dict]:
    """``"atp,ig:8x16"`` -> ``{"atp": {...}, "ig 8 steps × 16 groups": {...}}`` (attribute's
    keyword arguments)."""
    out = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "atp":
            out["atp"] = {"method": "atp"}
            continue
        steps, groups = (int(x) for x in item.removeprefix("ig:").split("x"))
        out[f"ig {steps} steps × {groups} groups"] = {
            "method": "ig",
            "steps": steps,
            "groups": groups,
        }
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's name elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load(args) -> tuple:
    """The model, a prompt trained for ``--train-steps`` on questions disjoint from the N."""
    name = str(sklens.tiny_checkpoint("qwen2")) if args.model == "tiny" else args.model
    model = sklens.load_model(name, device=args.device)
    n = args.n + args.n_train
    pool = examples(n) if args.task == "arithmetic" else sklens.data.generate_hans(n, seed=0)
    train, data = pool[: args.n_train], pool[args.n_train :]
    if args.train_steps:
        prompt = sklens.train_soft_prompt(
            model, train, n_slots=args.n_slots, steps=args.train_steps,
            batch_size=args.batch_size, progress=False,
        )  # fmt: skip
    else:
        prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    return model, prompt, data


def sample_units(
    effect: torch.Tensor, args, gen: np.random.Generator, shared: dict[str, list]
) -> dict[str, list]:
    """One estimator's stratified sample: its own ``"top"`` and ``"low"`` (from its bottom 90%),
    and the ``shared`` ``"random"`` and ``"layers"`` units every estimator is measured on; each a
    list of (layer, neuron, slot)."""
    flat = effect.abs().flatten()
    order = flat.argsort(descending=True).numpy()

    def units(ids) -> list:
        return [tuple(int(x) for x in np.unravel_index(i, effect.shape)) for i in ids]

    low = order[int(0.1 * len(order)) :]
    return {
        "top": units(order[: args.n_top]),
        "low": units(gen.choice(low, min(args.n_low, len(low)), replace=False)),
        **shared,
    }


def shared_units(shape: tuple[int, ...], args, gen: np.random.Generator) -> dict[str, list]:
    """``--n-random`` units drawn uniformly and ``--per-layer`` from every layer, drawn once for
    all estimators (each is measured on the pooled sample anyway)."""
    n = int(np.prod(shape))
    drawn = gen.choice(n, args.n_random, replace=False)
    return {
        "random": [tuple(int(x) for x in np.unravel_index(i, shape)) for i in drawn],
        "layers": [
            (L, int(gen.integers(shape[1])), int(gen.integers(shape[2])))
            for L in range(shape[0])
            for _ in range(args.per_layer)
        ],
    }


def accuracy_rows(results: dict, samples: dict, exact: dict) -> list[list[object]]:
    """Per estimator: r with exact over the pooled sample, and what its bottom 90% holds."""
    pooled = list(exact)
    truth = pd.Series([exact[u] for u in pooled])
    rows = []
    for name, result in results.items():
        est = pd.Series([float(result.effect[u]) for u in pooled])
        low = max(abs(exact[u]) for u in samples[name]["low"])
        top = abs(exact[samples[name]["top"][0]])
        rows.append(
            [
                name,
                len(pooled),
                f"{est.corr(truth):.3f}",
                f"{est.corr(truth, method='spearman'):.3f}",
                f"{(est - truth).abs().max():.4g}",
                f"{top:.4g}",
                f"{low:.4g}",
            ]
        )
    return rows


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(repeats=2)
    p.add_argument("--n", type=int, default=64, help="questions attributed and patched")
    p.add_argument("--n-train", type=int, default=64, help="questions the prompt trains on")
    p.add_argument("--train-steps", type=int, default=40, help="0: an untrained prompt")
    p.add_argument("--task", default="arithmetic", choices=("arithmetic", "hans"))
    p.add_argument("--metric", default="loss", choices=("loss", "logprob", "margin"))
    p.add_argument("--ablation", default="mean", choices=("mean", "zero"))
    p.add_argument("--estimators", default="atp,ig:8x16,ig:2x64", help="atp, ig:STEPSxGROUPS")
    p.add_argument("--n-top", type=int, default=15)
    p.add_argument("--n-random", type=int, default=15)
    p.add_argument("--per-layer", type=int, default=2)
    p.add_argument("--n-low", type=int, default=15, help="units from each bottom 90%%")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model, prompt, data = load(args)
    shared = {"metric": args.metric, "ablation": args.ablation, "batch_size": args.batch_size}
    methods = estimators(args.estimators)

    def run(kwargs):
        return lambda: sklens.attribute(model, prompt, data, **shared, **kwargs, progress=False)

    results = {name: run(kwargs)() for name, kwargs in methods.items()}
    gen = np.random.default_rng(args.seed)
    drawn = shared_units(tuple(next(iter(results.values())).effect.shape), args, gen)
    samples = {name: sample_units(r.effect, args, gen, drawn) for name, r in results.items()}
    pooled = list(dict.fromkeys(u for s in samples.values() for part in s.values() for u in part))
    changes = exact_effects(
        model, prompt, data, pooled, args.metric, ablation=args.ablation,
        batch_size=args.batch_size, progress=True,
    )  # fmt: skip
    exact = {u: float(c.mean()) for u, c in zip(pooled, changes, strict=True)}

    def scan():
        sklens.scan(model, prompt, data, "loss", batch_size=args.batch_size, progress=False)

    timed = {"scan, loss metric": scan, **{name: run(kw) for name, kw in methods.items()}}
    wall = interleaved(timed, args.repeats, args.device).wall
    report(args, model, results, samples, exact, wall)


def _target(kwargs: dict) -> str:
    """The cost target (issue: AtP ≤ 3× a loss scan; IG with s steps ≤ (s + 2)×, here with
    s·groups gradient passes in place of s)."""
    if kwargs["method"] == "atp":
        return "≤ 3"
    return f"≤ {kwargs['steps'] * kwargs['groups'] + 2}"


def report(args, model, results, samples, exact, wall) -> None:
    """Write both tables, after a preamble with the command, machine and versions."""
    stamp = datetime.date.today().isoformat()
    name = f"attribution-{stamp}"
    v = versions()
    gpu = f"; GPU {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    preamble = [
        f"## attribution — {datetime.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"command: `python {shlex.join(['benchmarks/attribution.py', *sys.argv[1:]])}`",
        f"machine: {cpu_model()}, {torch.get_num_threads()} threads{gpu}",
        "versions: " + ", ".join(f"{k} {v[k]}" for k in ("sklens", "torch", "transformer-lens")),
        f"model {args.model} ({model.cfg.n_layers} layers × {model.cfg.d_mlp} neurons × "
        f"{args.n_slots} slots), N = {args.n} {args.task} questions, metric {args.metric}, "
        f"{args.ablation} ablation, prompt trained {args.train_steps} steps",
        "",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / f"{name}.md", "a", encoding="utf-8") as fh:
        fh.write("\n".join(preamble) + "\n")
    print("\n".join(preamble))
    header = [
        "estimator",
        "units patched",
        "Pearson r",
        "Spearman r",
        "largest abs. error",
        "abs. exact effect of its top unit",
        "largest abs. exact effect in its bottom 90% (sampled)",
    ]
    write_results(name, header, accuracy_rows(results, samples, exact), args.device, args.results)
    base = wall["scan, loss metric"]
    targets = {name: _target(kw) for name, kw in estimators(args.estimators).items()}
    rows = [
        [method, args.n, f"{statistics.median(t):.2f}", ratios(t, base), targets.get(method, "")]
        for method, t in wall.items()
    ]
    header = ["method", "N", "median s", "× loss scan, median (range) of rounds", "target"]
    write_results(name, header, rows, args.device, args.results)


if __name__ == "__main__":
    main()
