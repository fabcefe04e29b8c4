"""Scan speed against its floor: a bare forward pass that computes only what the metric needs.

The floors run the same batches with the prompt written in, no other hooks, and the weights in
the layout the forward reads (``sklens.models.layout``, as the scan holds them):

* **loss floor**: the rows with their completions, the residual stream through every layer, and
  ``ln_final`` + unembedding only at the positions that predict completion tokens (what a loss
  metric needs, ``sklens.prompt.forward.completion_logprobs``);
* **label floor**: the rows cut after the slots (a causal model's slot activations cannot depend
  on what follows), every layer, nothing unembedded.

Every method is timed once per round next to its floor (``common.paired``: floor first in even
rounds, second in odd ones, the methods' order rotated), so the machine's drift cancels in each
ratio; the table gives the median and range of the per-round ratios, and how far each method's
peak memory rose above the memory before it. The methods: the scan with a loss and with a label
metric (the default, and keeping 5 extremal examples per unit as ``sklens run`` does), and with a
max-statistic permutation null of B = 200 and 1,000 (label metric, and loss metric at B = 1,000,
whose null comes from the held activations when N ≤ B).
"""

from __future__ import annotations

import torch
from common import examples, metric, paired, paired_rows, parser, write_results

import sklens
from sklens.data.format import encode, iter_batches
from sklens.models.layout import linear_layout
from sklens.prompt.forward import completion_logprobs


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--nulls", default="200,1000", help="permutation counts to time (label metric)")
    args = p.parse_args()
    model = sklens.load_model(args.model, device=args.device, dtype=args.dtype)
    data = examples(args.n)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    encoded = encode(model, data, args.n_slots)
    writer = prompt.writer()

    def floor(with_completion: bool) -> None:
        batches = iter_batches(
            model, encoded, args.n_slots, args.batch_size, with_completion=with_completion
        )
        with torch.no_grad(), model.hooks(fwd_hooks=[("hook_embed", writer)]):
            for batch in batches:
                batch = batch.to(args.device)
                writer.start(batch)
                if with_completion:
                    completion_logprobs(model, batch)
                else:
                    model(
                        batch.tokens,
                        attention_mask=batch.attention_mask,
                        stop_at_layer=model.cfg.n_layers,
                    )

    def scan(chosen, **kwargs):
        return lambda: sklens.scan(
            model, prompt, data, chosen, batch_size=args.batch_size, progress=False, **kwargs
        )

    loss, label = sklens.metrics.loss(), metric()
    nulls = [int(b) for b in args.nulls.split(",") if b]
    methods = {
        "loss floor": lambda: floor(True),
        "label floor": lambda: floor(False),
        "scan, loss metric": scan(loss),
        "scan, loss metric, 5 extremal examples kept": scan(loss, n_extremal=5),
        "scan, label metric": scan(label),
        "scan, label metric, 5 extremal examples kept": scan(label, n_extremal=5),
        **{f"scan, label metric, B={b}": scan(label, n_permutations=b) for b in nulls},
        **(
            {f"scan, loss metric, B={max(nulls)}": scan(loss, n_permutations=max(nulls))}
            if nulls
            else {}
        ),
    }
    floors = {
        name: "loss floor" if "loss" in name else "label floor"
        for name in methods
        if "floor" not in name
    }
    with linear_layout(model):  # the floor reads the weights as the scan does, uncopied
        timing, beside = paired(methods, floors, args.repeats, args.device)
    cfg = model.cfg
    units = cfg.n_layers * cfg.d_mlp * args.n_slots
    header, rows = paired_rows(
        timing, beside, args.n, "× its floor run beside it, median (range) of rounds"
    )
    write_results("scan", header, rows, args.device, args.results)
    print(
        f"units (layers·d_mlp·slots) D = {units:,}; held activations 4·D·N = "
        f"{4 * units * args.n / 2**20:.0f} MB; kept extremes 2·D·5·12 = "
        f"{2 * units * 5 * 12 / 2**20:.0f} MB"
    )


if __name__ == "__main__":
    main()
