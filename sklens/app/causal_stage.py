"""The causal follow-ups of a study (``sklens run --ablate``, ``--attribute``,
``--dose-response``, ``--steering``, ``--counterfactual``), on the causal split (the
counterfactual pairs on held-out examples): attribution of the loss to every
unit, the causal check of the top-K against random sets with its positive control (the
attribution's top-K where it ran, else every unit of the selected layers), its dose-response over
k for the correlation and attribution rankings, the steering curve, and the top-K's paired
changes under named edits (``sklens.counterfactual``). Random units are matched
in layer, mean |activation| and |score| decile (``sklens.causal.controls``).
"""

from __future__ import annotations

from typing import Any

from sklens.app.attribution_stage import attribution_stage
from sklens.app.run_state import StudyRun
from sklens.app.statistics import causal_summary
from sklens.app.tasks import counterfactual_pairs
from sklens.atomic import write_csv
from sklens.causal.check import causal_check, dose_response
from sklens.causal.controls import score_strata
from sklens.causal.counterfactual import counterfactual
from sklens.causal.steering import steering_curve
from sklens.data.example import Example


def causal_stage(run: StudyRun) -> None:
    """The causal follow-ups on the causal split: attribution, the causal check (with its
    positive control: the attribution's top-K where it ran), its dose-response and the steering
    curve."""
    causal = run.config.causal
    run.summary["causal"] = run.summary["attribution"] = None
    examples = run.task.causal if causal.score_choices else _loss_only(run.task.causal)
    attributed = None
    if causal.attribute:
        run.summary["attribution"], attributed = attribution_stage(run)
        run.lap("attribute")
    controls = _controls(run)
    if causal.ablate:
        positive = None
        if causal.positive_control:
            positive = attributed if attributed is not None else "layers"
        table = causal_check(
            run.model, run.prompt, examples, run.neurons, modes=causal.ablate_modes,
            group_by=run.task.group_by, positive=positive, n_random=causal.n_random,
            parts=run.parts("causal"), **controls,
        )  # fmt: skip
        write_csv(table, run.out / "causal.csv")
        run.summary["causal"] = causal_summary(table)
        run.lap("causal")
    if causal.dose_response:
        k = max(causal.dose_response)
        rankings = {"correlation": run.result.top_k(k, run.config.select.reduce)}
        if attributed is not None:
            rankings["attribution"] = attributed.head(k)
        table = dose_response(
            run.model, run.prompt, examples, rankings, ks=causal.dose_response,
            n_random=causal.dose_random, parts=run.parts("dose_response"), **controls,
        )  # fmt: skip
        write_csv(table, run.out / "dose_response.csv")
        run.lap("dose_response")
    if causal.steering:
        curve = steering_curve(
            run.model, run.prompt, examples, run.neurons,
            factors=list(causal.steering), n_random=causal.steering_random, **controls,
        )  # fmt: skip
        write_csv(curve, run.out / "steering.csv")
        run.lap("steering")
    if causal.counterfactual:
        run.summary["counterfactual"] = {
            edit: _counterfactual(run, edit, controls) for edit in causal.counterfactual
        }
        run.lap("counterfactual")


def _loss_only(examples: list[Example]) -> list[Example]:
    """``--no-score-choices``: the examples without their choices, so the causal follow-ups
    measure the loss only (a question with seven choices costs seven passes to score)."""
    return [
        Example(e.instruction, e.completion,
                {k: v for k, v in e.meta.items() if k not in ("choices", "answer")})
        for e in examples
    ]  # fmt: skip


def _counterfactual(run: StudyRun, edit: str, controls: dict[str, Any]) -> dict[str, Any]:
    """``counterfactual_<edit>.csv``: the top-K's paired changes under the named edit of
    held-out examples, against random units of their layer and slot; the model's own change."""
    made, note = counterfactual_pairs(run.config, run.task, edit)
    found = counterfactual(
        run.model, run.prompt, made, run.neurons, metric=controls["metric"],
        n_random=run.config.causal.n_random, seed=run.config.seed,
        batch_size=run.batch_size, progress=run.progress,
    )  # fmt: skip
    write_csv(found.units, run.out / f"counterfactual_{edit}.csv")
    return note | {
        "max_abs_d_std": float(found.units.d_std.abs().max()),
        "min_q": float(found.units.q.min()),
        "min_p_vs_random": float(found.units.p_vs_random.min()),
        "behaviour": found.behaviour.set_index("measure").to_dict(orient="index"),
        "examples": "held out from the selection: the pool no split took, then the "
        "confirmation split",
    }


def _controls(run: StudyRun) -> dict[str, Any]:
    """What every causal edit of a study shares: the metric, the random units' matching (scale,
    and the decile of |score| in this run's scan), the seed, the batches."""
    causal = run.config.causal
    strata = score_strata(run.result, run.config.select.reduce) if causal.match_score else None
    return {
        "metric": run.metric,
        "match_scale": causal.match_scale,
        "strata": strata,
        "seed": run.config.seed,
        "batch_size": run.batch_size,
        "progress": run.progress,
    }
