"""The statistics phase of a study: what it measures beyond the top-K, each written to its own
file of the run directory, and their summary for ``summary.json``.

* ``sparsity``: how many units score high, against the null where it ran (in-sample);
* ``significance``: the permutation null's FWER and FDR counts (in-sample);
* ``mutual_information``: ``neurons_mi.csv``, the MI ranking beside Pearson's (in-sample);
* ``held_out``: ``heldout.csv``, the top-K re-measured on the confirmation split, and
  ``explanations.csv``, their candidate explanations ranked there (``sklens.explain``);
* ``stability``: the seed-stability tables (``consensus.csv``, ``stability_*.csv``);
* ``behaviour``: ``behaviour.csv``, the model's loss and accuracies per group of a meta field,
  with the trained prompt and without one (``--behaviour-by``).

``causal_summary`` condenses a causal check's table for the summary and the reproduction demos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sklens.app.run_state import StudyRun
from sklens.app.tasks import behaviour_examples
from sklens.atomic import write_csv
from sklens.causal.behaviour import behaviour
from sklens.confirm.held_out import confirm_from
from sklens.confirm.stability import seed_stability
from sklens.explanation.explain import explain_activations
from sklens.explanation.hypotheses import candidate_hypotheses
from sklens.scanning.result import Scan
from sklens.scanning.sparsity import sparsity
from sklens.stats.mutual_info import top_k_overlap
from sklens.stats.rank_tests import average_ranks
from sklens.vocabulary import Reduce


def run_statistics(run: StudyRun) -> dict[str, Any]:
    """The statistics of a study beyond the top-K, each written to its own file; their summary."""
    select = run.config.select
    # the top-K table is shorter where fewer units have a score (e.g. a few heads)
    k = len(run.neurons)
    extras: dict[str, Any] = {"sparsity": sparsity(run.result, k=k, reduce=select.reduce)}
    if run.result.null is not None:
        extras["significance"] = _significance(run)
    if run.result.mutual_info is not None:
        by_mi, extras["mutual_information"] = compare_with_pearson(
            run.result, select.top_k, select.reduce
        )
        write_csv(by_mi, run.out / "neurons_mi.csv")
    if run.confirmed is not None:
        extras |= _held_out(run)
        run.lap("explain")
    if run.config.confirm.seeds:
        extras["stability"] = _stability(run)
        run.lap("stability")
    if run.config.confirm.behaviour_by is not None:
        extras["behaviour"] = _behaviour(run)
        run.lap("behaviour")
    return extras


def _behaviour(run: StudyRun) -> dict[str, Any]:
    """``behaviour.csv``: the model's loss and accuracies on each group of ``--behaviour-by``,
    with the trained prompt and without one, on the examples the prompt never trained on."""
    config = run.config
    examples = behaviour_examples(config, run.task)
    tables, differences = [], {}
    for prompt_name, prompt in (("trained", run.prompt), ("no_prompt", None)):
        table = behaviour(
            run.model, prompt, examples, config.confirm.behaviour_by, seed=config.seed,
            batch_size=run.batch_size,
        )  # fmt: skip
        tables.append(table.assign(prompt=prompt_name))
        rows = table[table.group == "difference"].set_index("measure")
        differences[prompt_name] = rows[["mean", "lo", "hi"]].to_dict(orient="index")
    write_csv(pd.concat(tables, ignore_index=True), run.out / "behaviour.csv")
    return {
        "by": config.confirm.behaviour_by,
        "where": config.confirm.behaviour_where,
        "n": len(examples),
        "groups": tables[0].attrs["groups"],
        "chance_accuracy": tables[0].attrs["chance_accuracy"],
        "difference": differences,  # empty where there are more than two groups
        "examples": "the selection and confirmation splits (the prompt never trained on them)",
    }


def _significance(run: StudyRun) -> dict[str, Any]:
    """The permutation null's FWER and FDR counts (in-sample)."""
    result, reduce = run.result, run.config.select.reduce
    return {
        "n_permutations": result.null.n_permutations,
        "statistic": result.settings.statistic,
        "null_top_score_95": float(result.null.max_null(reduce).quantile(0.95)),
        **{
            f"n_{m}_0.05": len(result.significant(0.05, m, reduce))
            for m in ("fwer", "fdr_bh", "fdr_by")
        },
        "sample": f"in-sample (selection set, n={len(run.task.val)})",
    }


def _held_out(run: StudyRun) -> dict[str, Any]:
    """``heldout.csv`` (the top-K re-measured on the confirmation split) and
    ``explanations.csv`` (their candidate explanations ranked there)."""
    config, task, acts = run.config, run.task, run.confirmed[0]
    table = confirm_from(
        *run.confirmed,
        run.neurons,
        task.confirm,
        measures=list(config.confirm.measures),
        group_by=task.group_by,
        covariates=list(config.confirm.covariates),
        seed=config.seed,
    )
    write_csv(table, run.out / "heldout.csv")
    held_out = {
        "n_select": len(task.val),
        "n_heldout": len(task.confirm),
        "mean_r_select": float(table.r_select.mean()),
        "mean_r_heldout": float(table.r_heldout.mean()),
        "n_ci_excludes_0": int(((table.r_lo > 0) | (table.r_hi < 0)).sum()),
        "n_adjusted_ci_excludes_0": int(((table.r_lo_adj > 0) | (table.r_hi_adj < 0)).sum()),
        **({"mean_auroc": float(table.auroc.mean())} if "auroc" in table else {}),
    }
    hypotheses, skipped = candidate_hypotheses(run.model.tokenizer, task.confirm)
    explained = explain_activations(
        acts, run.neurons, hypotheses, skipped=skipped, seed=config.seed
    )
    write_csv(explained.table, run.out / "explanations.csv")
    explanations = {"n_hypotheses": len(hypotheses), "skipped": skipped}
    return {"held_out": held_out, "explanations": explanations}


def _stability(run: StudyRun) -> dict[str, Any]:
    """Seed stability of the top-K: a prompt trained and scanned per seed (never on the plateau
    slice); the tables ``stability_*.csv`` and ``consensus.csv``."""
    config = run.config
    stability = seed_stability(
        run.model,
        run.fit,
        run.task.val,
        run.metric,
        seeds=list(config.confirm.seeds),
        k=config.select.top_k,
        reduce=config.select.reduce,
        batch_size=config.batch_size,
        progress=run.progress,
        site=run.result.site,
        n_slots=config.train.n_slots,
        lr=config.train.lr,
        # the run's own prompt is its seed's training, done already with these settings
        trained={config.seed: run.prompt} if config.seed in config.confirm.seeds else None,
        checkpoints=run.parts("seeds"),
        **run.plateau_kwargs,
    )
    write_csv(stability.jaccard.reset_index(names="run"), run.out / "stability_jaccard.csv")
    write_csv(stability.rank_corr.reset_index(names="run"), run.out / "stability_rank_corr.csv")
    write_csv(stability.consensus, run.out / "consensus.csv")
    return stability.summary()


def causal_summary(table: pd.DataFrame | str | Path) -> list[dict[str, Any]]:
    """The selected set's overall rows of a causal check (a ``causal_check`` table or its CSV),
    with the random sets' mean and median change, what the test could detect (``mde_loss``) and
    what the data exclude (``bound_loss``, also as a share of the prompt's own effect), and the
    positive control's change where it was run."""
    if not isinstance(table, pd.DataFrame):
        table = pd.read_csv(table)
    overall = table[table.group == "all"]
    rows = []
    for mode, part in overall.groupby("mode"):
        selected = part[part.set == "selected"].iloc[0]
        randoms = part[part.set.str.startswith("random_")]
        row = {
            "mode": mode,
            "n": int(selected["n"]),
            "n_random": len(randoms),
            **{k: _plain(selected[k]) for k in _SELECTED if k in selected},
            "random_d_loss_mean": float(randoms.d_loss.mean()),
            "random_d_loss_median": float(randoms.d_loss.median()),
            "random_d_accuracy_mean": float(randoms.d_accuracy.mean()),
        }
        if "bound_loss" in selected:
            effect = float(selected["prompt_effect_loss"])
            row["bound_loss_share_of_prompt"] = float(selected["bound_loss"]) / effect
        positive = part[part.set == "positive"]
        if len(positive):
            row |= {f"positive_{k}": _plain(positive.iloc[0][k]) for k in _POSITIVE}
        rows.append(row)
    return rows


def _plain(value: Any) -> Any:
    """A table cell as the Python number JSON writes (numpy's int64 is not an int)."""
    return value.item() if hasattr(value, "item") else value


# the selected row's columns a causal summary keeps
_SELECTED = (
    "d_loss", "d_loss_lo", "d_loss_hi", "p_loss", "mde_loss", "excess_loss", "excess_lo_loss",
    "excess_hi_loss", "bound_loss", "prompt_effect_loss", "d_accuracy", "p_accuracy",
    "accuracy_base", "d_accuracy_per_token", "p_accuracy_per_token", "accuracy_per_token_base",
    "choice_changed", "choice_changed_lo", "choice_changed_hi",
)  # fmt: skip
_POSITIVE = ("n_neurons", "d_loss", "d_loss_lo", "d_loss_hi", "p_loss", "excess_loss")


def compare_with_pearson(
    scan: Scan, k: int, reduce: Reduce = "max", alpha: float = 0.05
) -> tuple[pd.DataFrame, dict[str, object]]:
    """How the MI ranking of a scan differs from its Pearson ranking (both in-sample).

    Returns the MI top-``k`` with an ``in_pearson_top`` column (is the unit in Pearson's top-``k``
    under ``reduce``), and a summary: the top-``k`` overlap, the overlap of the top ``10·k`` and
    ``100·k``, Spearman's ρ between the two scores over every unit, and with a null how many
    units pass the family-wise test at ``alpha`` under each measure.

    Args:
        scan: a scan run with ``mi_bins``.
        k: the top-k compared.
        reduce: Pearson's ranking rule (``"max"`` or ``"absmax"``).
        alpha: the family-wise level.
    """
    mutual_info = scan.mutual_info
    if mutual_info is None:
        raise ValueError("this scan has no mutual information: scan with mi_bins=4")
    table = mutual_info.top_k(k).assign(site=scan.settings.site)
    units = set(top_k_overlap(scan.top_k(k, reduce), table)["shared"])
    table["in_pearson_top"] = [unit in units for unit in zip(table.layer, table.unit, strict=True)]
    pearson = scan.scores(reduce)[0].abs().nan_to_num(nan=0.0).flatten()
    ranks = average_ranks(torch.stack([pearson.double(), mutual_info.scores()[0].flatten()]))
    rho = torch.corrcoef(ranks)[0, 1]
    summary: dict[str, object] = {
        "bins": mutual_info.n_bins,
        "k": k,
        "shared_with_pearson": len(units),
        "only_mi": " ".join(
            f"L{layer}N{n}"
            for layer, n in sorted(set(zip(table.layer, table.unit, strict=True)) - units)
        ),
        "spearman_rho_all_units": float(rho),
    }
    for wider in (10 * k, 100 * k):
        if wider < pearson.numel():
            shared = top_k_overlap(scan.top_k(wider, reduce), mutual_info.top_k(wider))["shared"]
            summary[f"shared_top_{wider}"] = len(shared)
    if mutual_info.null is not None and scan.null is not None:
        summary["n_fwer_0.05_mi"] = int((mutual_info.p_values("fwer") <= alpha).sum())
        summary["n_fwer_0.05_pearson"] = int((scan.p_values(reduce, "fwer") <= alpha).sum())
        summary["n_permutations"] = mutual_info.null.n_permutations
    return table, summary
