"""Markdown from a study's results.json: the side-by-side rows (paper vs sklens, each with the
command and the results.json key that regenerate it) and a plain account read off the numbers.

Used by ``make_reproduction_doc.py`` (the three studies in ``docs/reproduction.md``), on the
``results.json`` files of the last reproduction, kept in ``docs/reproduction/``; those were
written by the study runner that ``sklens.run_study`` replaced, and the next re-run of the
studies (``demos/rq*.py``, whose numbers are in each run directory's ``summary.json``) replaces
this reader. Nothing here computes a statistic: it only reads them.
"""

from __future__ import annotations

from typing import Any

NOT_REPORTED = "not reported"


def get(results: dict[str, Any], key: str) -> Any:
    """``results["a"]["b"]`` for ``key="a.b"`` (None when missing)."""
    value: Any = results
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def interval(results: dict[str, Any], mean: str, lo: str, hi: str) -> str:
    return f"{fmt(get(results, mean))} [{fmt(get(results, lo))}, {fmt(get(results, hi))}]"


def _causal_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for j, mode in enumerate(get(results, "causal.modes") or []):
        key = f"causal.modes[{j}]"
        rows.append(
            (
                f"causal ({mode['mode']} ablation of the top-10 at the slots, n={mode['n']}): "
                f"Δloss [95% CI] vs median of {mode['n_random']} scale-matched random sets; rank p",
                NOT_REPORTED + " (future work in the paper)",
                f"{fmt(mode['d_loss'])} [{fmt(mode['d_loss_lo'])}, {fmt(mode['d_loss_hi'])}] vs "
                f"{fmt(mode['random_d_loss_median'])}; p = {fmt(mode['p_loss'])}",
                f"{key}.d_loss, .random_d_loss_median, .p_loss",
            )
        )
        if mode.get("d_accuracy_per_token") is not None:
            rows.append(
                (
                    f"causal ({mode['mode']}): Δ per-token accuracy (base "
                    f"{fmt(mode['accuracy_per_token_base'])}); rank p",
                    NOT_REPORTED,
                    f"{fmt(mode['d_accuracy_per_token'])}; p = {fmt(mode['p_accuracy_per_token'])}",
                    f"{key}.d_accuracy_per_token, .p_accuracy_per_token",
                )
            )
    return rows


def _rq3_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    b = get(results, "rq3.behaviour") or {}
    if "correct_per_token" in b:
        acc = b["correct_per_token"]
        rows.append(
            (
                "multiplications: per-token accuracy with / without `last_digit_decides` "
                f"(n = {b['n_shortcut']} / {b['n_no_shortcut']}; chance ≈ {fmt(b['chance_accuracy'], 2)}); "
                "difference [95% CI]",
                "the model uses the shortcut (implied)",
                f"{fmt(acc['shortcut']['mean'])} / {fmt(acc['no_shortcut']['mean'])}; "
                f"{fmt(acc['difference']['mean'])} [{fmt(acc['difference']['lo'])}, "
                f"{fmt(acc['difference']['hi'])}]",
                "rq3.behaviour.correct_per_token",
            )
        )
        loss = b["loss"]["difference"]
        rows.append(
            (
                "multiplications: loss with − without the shortcut [95% CI]; uses the shortcut?",
                "—",
                f"{fmt(loss['mean'])} [{fmt(loss['lo'])}, {fmt(loss['hi'])}]; "
                f"{fmt(b['uses_shortcut'])}",
                "rq3.behaviour.loss.difference, rq3.behaviour.uses_shortcut",
            )
        )
    m = get(results, "rq3.manual_step")
    if m:
        rows.append(
            (
                "the 10 lowest-activating questions of the top neuron: multiplications; "
                "`last_digit_decides` (base rate)",
                "all multiplications decided by the last digit",
                f"{m['n_multiplication']} of {m['n']}; {m['n_last_digit_decides']} of {m['n']} "
                f"({pct(m['base_rate_last_digit_decides'])} of the split)",
                "rq3.manual_step",
            )
        )
    ranking = get(results, "rq3.properties") or []
    if ranking:
        best = ranking[0]
        rows.append(
            (
                "property that best explains the top-10 loss neurons on held-out questions "
                "(mean variance explained)",
                "last digit decides (multiplications)",
                f"{best['property']} ({fmt(best['mean_explained'])})",
                "rq3.properties[0]",
            )
        )
    for name, cf in (get(results, "rq3.counterfactual") or {}).items():
        if "behaviour" not in cf:
            continue  # too few questions could be edited
        loss, changed = cf["behaviour"]["loss"], cf["behaviour"].get("choice_changed")
        picks = "n/a" if changed is None else pct(changed["change"])
        rows.append(
            (
                f"counterfactual `{name}` ({cf['used']} edited questions, none from the selection): the "
                "largest paired change of a top neuron (SDs); its smallest p against random "
                "units; Δ loss [95% CI]; picks changed",
                "the top neurons encode this shortcut (implied)",
                f"{fmt(cf['max_abs_d_std'])}; {fmt(cf['min_p_vs_random'])}; {fmt(loss['change'])} "
                f"[{fmt(loss['lo'])}, {fmt(loss['hi'])}]; {picks}",
                f"rq3.counterfactual.{name}",
            )
        )
    return rows


def _training_row(results: dict[str, Any]) -> tuple[str, str, str, str]:
    """Each seed's steps, whether its held-out loss reached a plateau, and that loss."""
    seeds = get(results, "training.seeds") or {}
    parts = []
    for name, record in seeds.items():
        plateau = record["plateau"]
        parts.append(
            f"{name}: {plateau['steps']} steps, {fmt(record['first_val_loss'], 2)} → "
            f"{fmt(plateau['best_val_loss'], 2)}"
            + ("" if plateau["stopped"] else " (the cap, before a plateau)")
        )
    return (
        f"prompt training (max {get(results, 'settings.max_steps')} steps): held-out loss "
        "first → best, per seed",
        "trained to convergence",
        "; ".join(parts) or "n/a",
        "training.seeds",
    )


def study_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, paper, sklens, results.json key) for one study."""
    s = results.get("sparsity", {})
    paper_thr = fmt(get(results, "paper.threshold"), 2)
    rows = [
        _training_row(results),
        (
            "top-10 threshold of \\|score\\|",
            paper_thr,
            fmt(s.get("top_k_threshold")),
            "sparsity.top_k_threshold",
        ),
        (
            "neurons at or above the top-10 threshold",
            'sparse ("only a small subset")',
            f"{pct(s.get('frac_above_top_k'))} of {s.get('n_neurons')}",
            "sparsity.frac_above_top_k",
        ),
        (
            f"neurons at or above the paper's threshold {paper_thr}",
            "10 (its top-10)",
            pct(s.get("frac_above_paper_threshold")),
            "sparsity.frac_above_paper_threshold",
        ),
        (
            f"null: 95% quantile of the max \\|score\\| (B = {s.get('n_permutations')})",
            NOT_REPORTED,
            fmt(s.get("null_max_95")),
            "sparsity.null_max_95",
        ),
        (
            "neurons beyond the null: family-wise p ≤ 0.05; per-neuron p ≤ 0.05",
            "sparse",
            f"{pct(s.get('frac_fwer_05'))} ({s.get('n_fwer_05')}); {pct(s.get('frac_p_neuron_05'))}",
            "sparsity.frac_fwer_05, sparsity.frac_p_neuron_05",
        ),
        (
            f"held-out r of the top neuron [95% CI] (n = {get(results, 'held_out.n_heldout')}; "
            "in-sample r)",
            NOT_REPORTED,
            f"{interval(results, 'held_out.top_r_heldout', 'held_out.top_r_lo', 'held_out.top_r_hi')} "
            f"({fmt(get(results, 'held_out.top_r_select'))})",
            "held_out.top_r_heldout",
        ),
        (
            "top-10: mean held-out r (in-sample); CIs excluding 0",
            NOT_REPORTED,
            f"{fmt(get(results, 'held_out.mean_r_heldout'))} "
            f"({fmt(get(results, 'held_out.mean_r_select'))}); "
            f"{get(results, 'held_out.n_ci_excludes_0')} of 10",
            "held_out.mean_r_heldout, held_out.n_ci_excludes_0",
        ),
    ]
    if get(results, "held_out.top_auroc") is not None:
        rows.append(
            (
                "held-out AUROC of the top neuron [95% CI]",
                NOT_REPORTED,
                interval(
                    results, "held_out.top_auroc", "held_out.top_auroc_lo", "held_out.top_auroc_hi"
                ),
                "held_out.top_auroc",
            )
        )
    rows.append(
        (
            f"seeds {get(results, 'settings.seeds')}: mean top-10 overlap (of 10); Jaccard; "
            "rank r of all scores; Jaccard vs an untrained prompt",
            NOT_REPORTED,
            f"{fmt(get(results, 'stability.mean_overlap'), 1)}; "
            f"{fmt(get(results, 'stability.mean_jaccard'))}; "
            f"{fmt(get(results, 'stability.mean_rank_corr'))}; "
            f"{fmt(get(results, 'stability.jaccard_vs_untrained'))}",
            "stability",
        )
    )
    thresholds = get(results, "stability.top_k_threshold")
    if thresholds:
        rows.append(
            (
                "top-10 threshold without training: trained seeds / an untrained (random) prompt "
                "/ the last instruction token, no prompt",
                NOT_REPORTED,
                " / ".join(
                    [
                        ", ".join(fmt(v) for k, v in thresholds.items() if k.startswith("seed")),
                        fmt(thresholds.get("untrained")),
                        fmt(thresholds.get("last_token")),
                    ]
                ),
                "stability.top_k_threshold",
            )
        )
    rows += _causal_rows(results)
    rows += _rq3_rows(results)
    return rows


def table(all_results: list[dict[str, Any]], full: dict[str, dict[str, Any]] | None = None) -> str:
    """One markdown table, study by study, every number beside the command that makes it;
    with ``full`` (study → the ``--size full`` run's results) a column of the full-size run
    beside each number of the budget run, rows matched by their results.json key."""
    if not full:
        lines = [
            "| study | quantity | paper (Qwen1.5-1.8B-Chat) | sklens | regenerate: command → results.json key |",
            "|---|---|---|---|---|",
        ]
        for results in all_results:
            for quantity, paper, ours, key in study_rows(results):
                lines.append(
                    f"| {results['study'].upper()} | {quantity} | {paper} | {ours} | "
                    f"`{results['command']}` → `{key}` |"
                )
        return "\n".join(lines)
    lines = [
        "| study | quantity (full size) | paper (Qwen1.5-1.8B-Chat) | sklens, budget size | "
        "sklens, full size (to the plateau) | results.json key |",
        "|---|---|---|---|---|---|",
    ]
    for results in all_results:
        big = full.get(results["study"])
        budget = {row[3]: row for row in study_rows(results)}
        large = {row[3]: row for row in study_rows(big)} if big else {}
        for key in [*large, *(k for k in budget if k not in large)]:
            quantity, paper = (large.get(key) or budget[key])[:2]
            small = budget[key][2] if key in budget else "not in this run"
            lines.append(
                f"| {results['study'].upper()} | {quantity} | {paper} | {small} | "
                f"{large[key][2] if key in large else 'not run'} | `{key}` |"
            )
    return "\n".join(lines)


def account(results: dict[str, Any]) -> list[str]:
    """Plain sentences read off the numbers (no judgement the numbers do not carry)."""
    s = results.get("sparsity", {})
    thr, paper = s.get("top_k_threshold"), get(results, "paper.threshold")
    out = [
        f"Top-10 threshold {fmt(thr)} against the paper's {fmt(paper, 2)} "
        f"({'higher' if thr is not None and thr > paper else 'lower'}), on {s.get('n_neurons')} "
        f"neurons of {get(results, 'model.name')} and {get(results, 'held_out.n_select')} "
        "selection examples."
    ]
    if s.get("n_fwer_05") == 0:
        out.append(
            f"No neuron passes the max-statistic null (its 95% quantile of the max \\|score\\| "
            f"is {fmt(s['null_max_95'])}): the top-10 are not distinguishable from the best of "
            "shuffled metrics, so there is nothing to call sparse."
        )
    elif s.get("n_fwer_05") is not None:
        verdict = "sparse" if s.get("sparse") else "not sparse"
        out.append(
            f"{s['n_fwer_05']} neurons ({pct(s['frac_fwer_05'])}) pass the max-statistic null "
            f"(its 95% quantile of the max \\|score\\| is {fmt(s['null_max_95'])}): {verdict} "
            f"by our definition, {s.get('sparse_definition')}."
        )
    lo, hi = get(results, "held_out.top_r_lo"), get(results, "held_out.top_r_hi")
    if lo is not None and hi is not None:
        holds = lo > 0 or hi < 0
        out.append(
            f"The top neuron's r on held-out examples is {fmt(get(results, 'held_out.top_r_heldout'))} "
            f"[{fmt(lo)}, {fmt(hi)}] against {fmt(get(results, 'held_out.top_r_select'))} in-sample: "
            f"the association {'holds' if holds else 'is not distinguishable from 0'} on new examples."
        )
    overlap = get(results, "stability.mean_overlap")
    if overlap is not None:
        out.append(
            f"Seeds agree on {fmt(overlap, 1)} of the top-10 on average "
            f"({get(results, 'stability.in_all_seeds')} neurons in every seed's top-10)."
        )
    for mode in get(results, "causal.modes") or []:
        p = mode.get("p_loss")
        unusual = p is not None and p <= 0.05
        out.append(
            f"{mode['mode'].capitalize()}-ablating the top-10 changes the loss by {fmt(mode['d_loss'])} "
            f"against a median {fmt(mode['random_d_loss_median'])} for random sets of the same "
            f"layers and scale (p = {fmt(p)}): "
            f"{'more unusual than' if unusual else 'not distinguishable from'} random neurons."
        )
    b = get(results, "rq3.behaviour") or {}
    if "uses_shortcut" in b:
        out.append(
            "On multiplications, questions the last digit decides are "
            f"{'answered better' if b['uses_shortcut'] else 'not answered measurably better'} "
            f"(per-token accuracy {fmt(b['correct_per_token']['shortcut']['mean'])} vs "
            f"{fmt(b['correct_per_token']['no_shortcut']['mean'])}; chance ≈ "
            f"{fmt(b['chance_accuracy'], 2)})."
        )
    ranking = get(results, "rq3.properties") or []
    if ranking:
        names = ", ".join(f"{r['property']} ({fmt(r['mean_explained'])})" for r in ranking[:3])
        out.append(
            f"What explains the top loss neurons on held-out questions, best first: {names}."
        )
    explained = get(results, "rq3.explanations") or []
    if explained:
        out.append(f"`sklens.explain`, the top neuron's best held-out explanation: {explained[0]}.")
    for name, cf in (get(results, "rq3.counterfactual") or {}).items():
        if "behaviour" in cf:
            # one test per top neuron: "moved" needs the BH q over them, not the smallest raw p
            moved = cf.get("min_q") is not None and cf["min_q"] <= 0.05
            out.append(
                f"Editing {cf['used']} questions so that `{name}` holds "
                f"{'moves' if moved else 'does not move'} the top neurons beyond chance: the "
                f"largest paired change is {fmt(cf['max_abs_d_std'])} SD and the smallest q over "
                f"the top-10 {fmt(cf.get('min_q'))} (Benjamini–Hochberg); against random units of "
                f"each neuron's layer and slot the smallest p is {fmt(cf['min_p_vs_random'])}, "
                f"uncorrected over the ten. The loss changes by "
                f"{fmt(cf['behaviour']['loss']['change'])}."
            )
    return out


def study_markdown(results: dict[str, Any]) -> str:
    """A run's ``summary.md``: its rows, its account, its figures and its timings."""
    lines = [
        f"# {results['title']} — sklens on {get(results, 'model.name')} ({results['size']})",
        "",
    ]
    if results.get("size") == "tiny":
        lines += ["**A smoke run (size {}), not a reproduction.**".format(results.get("size")), ""]
    lines += [table([results]), "", "## Account", ""]
    lines += [f"- {sentence}" for sentence in account(results)]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({path})" for name, path in (results.get("figures") or {}).items()]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in (results.get("timings_s") or {}).items())
    lines += ["", f"Wall time per phase: {timings}.", ""]
    return "\n".join(lines)
