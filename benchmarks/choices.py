"""Multiple-choice scoring: each question's text before the slots run once and shared by its
choices (``forward.shared_prefix_pass``, the default) vs every choice as a whole row (the
alternative, ``batched_pass``), on BigBench arithmetic questions with their seven choices.

Rounds are interleaved (shared, whole, shared, ...) so that a noisy machine slows both alike;
the table gives each method's median and the ratio of the medians. The two must give the same
scores: the script checks they agree before it times them.
"""

from __future__ import annotations

import statistics

from common import examples, interleaved, parser, ratios, write_results

import sklens
from sklens.scanning import choices


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--n", type=int, default=24, help="questions")
    args = p.parse_args()
    model = sklens.load_model(args.model, device=args.device)
    data = examples(args.n)
    prompt = sklens.SoftPrompt.init_for(model, args.n_slots, seed=0)
    n_choices = sum(len(e.meta["choices"]) for e in data)

    def shared() -> choices.ChoiceScores:
        return choices.score_examples(model, prompt, data, batch_size=args.batch_size)

    def whole() -> choices.ChoiceScores:
        real = choices.shares_prefix
        choices.shares_prefix = lambda *a: False
        try:  # rows per pass as the shared pass has them (batch_size questions' choices)
            return choices.score_examples(
                model, prompt, data, batch_size=args.batch_size * n_choices // len(data)
            )
        finally:
            choices.shares_prefix = real

    a, b = shared(), whole()  # also the warm-up
    for field in ("total_logprob", "mean_loss"):
        diff = (getattr(a, field) - getattr(b, field)).abs().max().item()
        assert diff < 1e-3, f"{field} differs by {diff}"
    methods = {"shared prefix (default)": shared, "whole rows": whole}
    times = interleaved(methods, args.repeats, args.device).wall
    rows = [
        [
            name,
            args.n,
            n_choices,
            f"{statistics.median(t):.2f}",
            ratios(t, times["whole rows"]),
        ]
        for name, t in times.items()
    ]
    write_results(
        "choices",
        ["method", "questions", "choices", "s (median)", "× whole rows, median (range) of rounds"],
        rows,
        args.device,
        args.results,
    )


if __name__ == "__main__":
    main()
