"""bfloat16 against float32 on this machine: the speed of a training step and of the scan's pass
(interleaved rounds, ratios within each round), and with ``--study`` the equivalence of a whole
study, the README's main job, run in each dtype: the training losses, the top-10's overlap and
the correlations of the units both find. ``sklens.models.precision.AUTO_CPU`` is set from it.

    python benchmarks/precision.py                   # speed (a few minutes on 2 cores)
    python benchmarks/precision.py --study           # + the main job in both dtypes
    python benchmarks/precision.py --same-prompt RUN # a float32 run's prompt scanned in bf16
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import examples, interleaved, metric, parser, ratios, write_results

import sklens
from sklens.data.format import encode
from sklens.models.layout import linear_layout
from sklens.models.precision import cpu_has_bf16
from sklens.prompt.training import frozen, train_logprobs

DTYPES = ("float32", "bfloat16")


def step_and_scan(model: sklens.Model, args) -> dict[str, object]:
    """A training step as ``train_soft_prompt`` takes it, and a scan of 32 examples."""
    data, scanned = examples(args.batch_size), examples(32)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    opt = torch.optim.AdamW(prompt.parameters(), lr=3e-3)
    encoded, writer = encode(model, data, args.n_slots), prompt.writer()

    def step() -> None:
        with frozen(model), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            loss = train_logprobs(model, writer, encoded, list(range(len(data)))).mean_loss
            opt.zero_grad()
            loss.mean().backward()
            opt.step()

    def scan() -> None:
        sklens.scan(model, prompt, scanned, metric(), batch_size=args.batch_size, progress=False)

    return {"training step": step, "scan of 32": scan}


def speed(args) -> None:
    models = {d: sklens.load_model(args.model, device=args.device, dtype=d) for d in DTYPES}
    methods = {
        f"{what}, {d}": fn for d, m in models.items() for what, fn in step_and_scan(m, args).items()
    }
    with linear_layout(models["float32"]), linear_layout(models["bfloat16"]):
        timing = interleaved(methods, args.repeats, args.device)
    rows = []
    for what in ("training step", "scan of 32"):
        t32, t16 = timing.wall[f"{what}, float32"], timing.wall[f"{what}, bfloat16"]
        rows.append([what, f"{statistics.median(t32):.2f}", f"{statistics.median(t16):.2f}",
                     ratios(t16, t32), ratios(timing.cpu[f"{what}, bfloat16"],
                                              timing.cpu[f"{what}, float32"])])  # fmt: skip
    header = ["pass", "float32 s", "bfloat16 s", "bf16 / fp32 (rounds)", "same, CPU time"]
    note = f"bf16 instructions: {cpu_has_bf16()}; {args.repeats} rounds"
    write_results("precision", header, [*rows, [note, "", "", "", ""]], args.device, args.results)


def study(args) -> None:
    """The main job in each dtype, then what the float32 run's numbers become in bfloat16."""
    runs, out_of = {}, {}
    for d in DTYPES:
        out = Path(tempfile.mkdtemp(prefix=f"precision-{d}-"))
        out_of[d] = out / "run"
        config = sklens.StudyConfig(model=args.model, device=args.device, dtype=d)
        summary = sklens.run_study(config, out / "run", progress=False)
        history = json.loads((out / "run" / "prompt" / "soft_prompt.json").read_text())
        summary["history"] = history["history"]
        runs[d] = (summary, pd.read_csv(out / "run" / "neurons.csv"))
    (s32, top32), (s16, top16) = runs["float32"], runs["bfloat16"]
    key = ["layer", "unit"]
    shared = top32.merge(top16, on=key, suffixes=("_32", "_16"))
    union = len(set(map(tuple, top32[key].values)) | set(map(tuple, top16[key].values)))
    losses = _evaluations(s32, s16)
    rows = [
        ["top-10 Jaccard (layer, neuron)", f"{len(shared) / union:.2f}", "≥ 0.8"],
        ["max |Δr| of the shared units", f"{(shared.corr_32 - shared.corr_16).abs().max():.4f}",
         "≤ 0.01"],
        ["max relative Δ held-out loss over the evaluations",
         f"{max(abs(b - a) / a for a, b in losses):.4f} over {len(losses)}", "≤ 0.02"],
        ["wall s (float32 / bfloat16)",
         f"{sum(s32['timings_s'].values()):.0f} / {sum(s16['timings_s'].values()):.0f}", ""],
    ]  # fmt: skip
    rows += same_prompt(out_of["float32"], args)
    write_results("precision_study", ["measure", "value", "target"], rows, args.device,
                  args.results)  # fmt: skip
    print(json.dumps({d: r[0]["timings_s"] for d, r in runs.items()}, indent=1))


def same_prompt(run_dir: Path, args) -> list[list[str]]:
    """The float32 run's own prompt scanned again on its selection split by a bfloat16 model:
    how far the scan alone moves, with the training held fixed."""
    run = sklens.open_run(run_dir)
    model = sklens.load_model(args.model, device=args.device, dtype="bfloat16")
    found = sklens.scan(model, run.prompt, run.task.val, run.config.scan.metric or "loss",
                        batch_size=args.batch_size, progress=False)  # fmt: skip
    again, key = found.top_k(len(run.neurons)), ["layer", "unit"]
    shared = run.neurons.merge(again, on=key, suffixes=("_32", "_16"))
    union = len(set(map(tuple, run.neurons[key].values)) | set(map(tuple, again[key].values)))
    saved = sklens.Scan.load(run_dir / "scan.safetensors")
    diff = abs(found.corr.numpy() - saved.corr.numpy())
    return _within_reach(saved, float(np.nanmean(diff)), len(run.neurons)) + [
        ["same float32 prompt, scanned in bfloat16: top-10 Jaccard", f"{len(shared) / union:.2f}",
         "≥ 0.8"],
        ["same prompt: max / mean |Δr| over every (unit, slot)",
         f"{float(np.nanmax(diff)):.4f} / {float(np.nanmean(diff)):.4f}", "≤ 0.01"],
    ]  # fmt: skip


def _within_reach(saved: sklens.Scan, shift: float, k: int) -> list[list[str]]:
    """Why a top-k cannot survive a shift of the scores: how close the float32 top-k's scores
    lie together, and how many units lie within ``shift`` (bfloat16's mean |Δr|) of the k-th."""
    ranked = np.sort(np.abs(saved.scores(reduce="max")[0].numpy()).ravel())[::-1]
    reach = int((ranked >= ranked[k - 1] - shift).sum())
    return [
        [f"float32 top-{k}: scores from {ranked[0]:.4f} to {ranked[k - 1]:.4f}; units within "
         f"the mean |Δr| ({shift:.4f}) of the {k}-th score", f"{reach} of {ranked.size}", "—"],
    ]  # fmt: skip


def _evaluations(s32: dict, s16: dict) -> list[tuple[float, float]]:
    """The held-out losses of both trainings at the steps both evaluated."""
    a, b = ({h["step"]: h["val_loss"] for h in s["history"] if "val_loss" in h} for s in (s32, s16))
    return [(a[step], b[step]) for step in sorted(a.keys() & b.keys())]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--study", action="store_true", help="also the main job in both dtypes")
    p.add_argument("--same-prompt", type=Path, help="only: a float32 run's prompt in bfloat16")
    args = p.parse_args()
    if args.same_prompt is not None:
        rows = same_prompt(args.same_prompt, args)
        write_results("precision_study", ["measure", "value", "target"], rows, args.device,
                      args.results)  # fmt: skip
        return
    speed(args)
    if args.study:
        study(args)


if __name__ == "__main__":
    main()
