"""What mutual information adds to a scan: each scan with ``mi_bins`` timed beside the same scan
without it (``common.paired``: the plain scan first in even rounds, second in odd ones), so the
ratio is the cost of the MI alone, and how far each one's peak memory rose.

The pairs: a loss-metric scan with no null (the MI's bins and plug-in estimate only), and a
loss-metric scan with a B-permutation null, whose MI null is ``(A−1)(M−1)`` one-hot products per
layer and permutation chunk plus an ``xlogy`` per cell (``sklens.stats.mutual_info``); the main
job's selection set is N = 160, B = 200, A = 4.
"""

from __future__ import annotations

from common import examples, paired, paired_rows, parser, write_results

import sklens


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=160)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--mi-bins", type=int, default=4)
    args = p.parse_args()
    model = sklens.load_model(args.model, device=args.device)
    data = examples(args.n)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    loss = sklens.metrics.loss()

    def scan(**kwargs):
        return lambda: sklens.scan(
            model, prompt, data, loss, batch_size=args.batch_size, progress=False, **kwargs
        )

    B, A = args.permutations, args.mi_bins
    methods = {
        "scan, loss metric": scan(),
        f"scan, loss metric, MI {A} bins": scan(mi_bins=A),
        f"scan, loss metric, B={B}": scan(n_permutations=B),
        f"scan, loss metric, B={B}, MI {A} bins": scan(n_permutations=B, mi_bins=A),
    }
    names = list(methods)
    base = {names[1]: names[0], names[3]: names[2]}
    timing, beside = paired(methods, base, args.repeats, args.device)
    ratio = "× the same scan without MI run beside it, median (range) of rounds"
    header, rows = paired_rows(timing, beside, args.n, ratio)
    write_results("mutual_info", header, rows, args.device, args.results)
    cfg = model.cfg
    units = cfg.n_layers * cfg.d_mlp * args.n_slots
    print(f"D = {units:,} units; bin codes D·N = {units * args.n / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
