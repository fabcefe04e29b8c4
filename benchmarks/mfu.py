"""A training step against the hardware: the step's FLOPs (counted by torch's FlopCounterMode on
the step itself: the prefix pass, the slots' and completion's forward and backward), the
matmul throughput this machine reaches on the step's own largest GEMM shapes in the same dtype
and threads, measured in the same rounds, and their ratio, the model-FLOPs utilisation (MFU).
Then where the rest goes: a torch.profiler table of the step's self CPU time by kind of
operator (matmuls, attention, normalisation, rotary, elementwise, copies, hooks and Python).

    python benchmarks/mfu.py                       # float32 and bfloat16, 2 threads here
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from common import examples, parser, write_results
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import sklens
from sklens.data.format import encode, iter_batches
from sklens.models import _compat
from sklens.models.layout import linear_layout
from sklens.prompt.training import frozen, split_batch, train_logprobs

KINDS = {  # substrings of aten operator names, first match wins
    "matmul": ("mm", "matmul", "linear", "addmm", "bmm", "baddbmm"),
    "attention": ("softmax", "scaled_dot_product", "attention", "masked_fill", "where"),
    "normalisation": ("rsqrt", "pow", "mean", "var", "norm"),
    "rotary": ("cos", "sin", "rotate", "neg", "cat"),
    "copies": ("copy_", "clone", "contiguous", "to", "_to_copy", "index", "gather", "expand"),
    "elementwise": ("mul", "add", "sub", "div", "silu", "sigmoid", "exp", "log"),
}


def step_fn(model: sklens.Model, n_slots: int, batch_size: int):
    data = examples(batch_size)
    prompt = sklens.SoftPrompt.init_for(model, n_slots, seed=0)
    opt = torch.optim.AdamW(prompt.parameters(), lr=3e-3)
    encoded, writer = encode(model, data, n_slots), prompt.writer()
    order = list(range(len(data)))

    def step() -> None:
        with frozen(model), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            loss = train_logprobs(model, writer, encoded, order).mean_loss.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    if _compat.is_bridge(model):  # the bridge backpropagates through whole rows
        whole = next(iter_batches(model, encoded, n_slots, len(order), order=order))
        return step, int(whole.tokens.numel())
    _, _, rest = split_batch(model, encoded, n_slots, order)
    return step, int(rest.tokens.numel())


def gemm(tokens: int, cfg, dtype: torch.dtype):
    """The step's MLP GEMMs (up and gate, down) at its token count, as one timed call."""
    x = torch.randn(tokens, cfg.d_model, dtype=dtype)
    w_in = torch.randn(cfg.d_model, cfg.d_mlp, dtype=dtype)
    h = torch.randn(tokens, cfg.d_mlp, dtype=dtype)
    w_out = torch.randn(cfg.d_mlp, cfg.d_model, dtype=dtype)
    flops = 3 * 2 * tokens * cfg.d_model * cfg.d_mlp

    def run() -> float:
        start = time.perf_counter()
        for _ in range(20):
            x @ w_in, x @ w_in, h @ w_out  # noqa: B018
        return 20 * flops / (time.perf_counter() - start)

    return run


def kind_of(name: str) -> str:
    op = name.removeprefix("aten::")
    for kind, keys in KINDS.items():
        if any(op == k or op.startswith(k) for k in keys):
            return kind
    return "other (incl. hooks, Python, autograd)"


def profile_table(step) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            by_kind[kind_of(event.key)] += event.self_cpu_time_total
    total = sum(by_kind.values())
    return {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}


def main() -> None:
    args = parser(__doc__).parse_args()
    rows, shares = [], {}
    for dtype in ("float32", "bfloat16"):
        model = sklens.load_model(args.model, device=args.device, dtype=dtype)
        step, tokens = step_fn(model, args.n_slots, args.batch_size)
        with linear_layout(model):
            step()  # warm-up
            with FlopCounterMode(display=False) as counter:
                step()
            flops = counter.get_total_flops()
            rate = gemm(tokens, model.cfg, model.cfg.dtype)
            rate()
            times, rates = [], []
            for _ in range(args.repeats):  # step and GEMM alternate: the same machine state
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
                rates.append(rate())
            shares[dtype] = profile_table(step)
        seconds, peak = statistics.median(times), statistics.median(rates)
        rows.append([dtype, f"{flops / 1e9:.1f}", f"{seconds * 1000:.0f}",
                     f"{flops / seconds / 1e9:.0f}", f"{peak / 1e9:.0f}",
                     f"{flops / seconds / peak:.0%}", tokens])  # fmt: skip
    header = ["dtype", "step GFLOP", "median ms", "achieved GFLOP/s",
              "GEMM GFLOP/s (step's MLP shapes)", "MFU", "tokens with grad"]  # fmt: skip
    write_results("mfu", header, rows, args.device, args.results)
    kinds = sorted({k for s in shares.values() for k in s})
    table = [[k, *(f"{shares[d].get(k, 0):.0%}" for d in shares)] for k in kinds]
    write_results("mfu_profile", ["self CPU time by kind", *shares], table, args.device,
                  args.results)  # fmt: skip


if __name__ == "__main__":
    main()
