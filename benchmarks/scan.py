"""Scan speed: sklens.scan vs a bare forward pass over the same examples (no hooks) vs the naive
alternative (run_with_cache of every mlp.hook_post, then numpy.corrcoef per neuron and slot)."""

from __future__ import annotations

import numpy as np
import torch
from common import examples, median_time, metric, parser, write_results

import sklens
from sklens.data.format import encode, iter_batches


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument(
        "--naive-n", type=int, default=32, help="the naive method holds every activation"
    )
    args = p.parse_args()
    model = sklens.load_model(args.model, device=args.device)
    data = examples(args.n)
    prompt = sklens.SoftPrompt.init_for(model, args.n_tokens, seed=0)
    encoded = encode(model, data, args.n_tokens)
    tokens_total = sum(len(e.prefix) + args.n_tokens + len(e.completion) for e in encoded)
    writer = prompt.writer()

    def bare() -> None:  # the model on the same batches, prompt written in, nothing else
        with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            for batch in iter_batches(model, encoded, args.n_tokens, args.batch_size):
                writer.start(batch)
                model(batch.tokens, attention_mask=batch.attention_mask)

    def scan_loss() -> None:
        sklens.scan(
            model, prompt, data, sklens.metrics.loss(), batch_size=args.batch_size, progress=False
        )

    def scan_label() -> None:
        sklens.scan(
            model,
            prompt,
            data,
            metric(),
            batch_size=args.batch_size,
            progress=False,
        )

    small = data[: args.naive_n]
    small_encoded = encode(model, small, args.n_tokens)

    def naive() -> None:
        names = lambda n: n.endswith("mlp.hook_post")  # noqa: E731
        per_example = []
        with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            for batch in iter_batches(model, small_encoded, args.n_tokens, args.batch_size):
                writer.start(batch)
                _, cache = model.run_with_cache(
                    batch.tokens, attention_mask=batch.attention_mask, names_filter=names
                )
                stacked = torch.stack(
                    [cache[f"blocks.{L}.mlp.hook_post"] for L in range(model.cfg.n_layers)], 1
                )
                rows = torch.arange(len(batch.indices))[:, None]
                per_example.append(stacked[rows, :, batch.slot_positions].numpy())  # (B, k, L, d)
        acts = np.concatenate(per_example).reshape(len(small), -1)
        values = np.array([e.meta["operation"] == "multiplication" for e in small], dtype=float)
        [np.corrcoef(acts[:, j], values)[0, 1] for j in range(acts.shape[1])]

    timed = {
        "bare forward": median_time(bare, args.repeats, args.device),
        "sklens.scan (loss metric)": median_time(scan_loss, args.repeats, args.device),
        "sklens.scan (label metric)": median_time(scan_label, args.repeats, args.device),
    }
    naive_t = median_time(naive, 1, args.device, warmup=0) * args.n / args.naive_n
    timed[f"naive run_with_cache + corrcoef (from N={args.naive_n}, scaled)"] = naive_t
    base = timed["bare forward"]
    rows = [
        [
            name,
            args.n,
            f"{t:.1f}",
            f"{t / base:.2f}",
            f"{args.n / t:.2f}",
            f"{tokens_total / t:.0f}",
        ]
        for name, t in timed.items()
    ]
    write_results(
        "scan",
        ["method", "N", "s", "× bare forward", "examples/s", "tokens/s"],
        rows,
        args.device,
        args.results,
    )


if __name__ == "__main__":
    main()
