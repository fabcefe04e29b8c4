"""The causal follow-ups of a study (``sklens run --ablate``, ``--attribute``,
``--dose-response``, ``--steering``), all on the causal split: attribution of the loss to every
unit, the causal check of the top-K against random sets with its positive control (the
attribution's top-K where it ran, else every unit of the selected layers), its dose-response over
k for the correlation and attribution rankings, and the steering curve. Random units are matched
in layer, mean |activation| and |score| decile (``sklens.causal.controls``).
"""

from __future__ import annotations

from typing import Any

from sklens.app.attribution_stage import attribution_stage
from sklens.app.run_state import StudyRun
from sklens.app.statistics import causal_summary
from sklens.atomic import write_csv
from sklens.causal.check import causal_check, dose_response
from sklens.causal.controls import score_strata
from sklens.causal.steering import steering_curve


def causal_stage(run: StudyRun) -> None:
    """The causal follow-ups on the causal split: attribution, the causal check (with its
    positive control: the attribution's top-K where it ran), its dose-response and the steering
    curve."""
    causal = run.config.causal
    run.summary["causal"] = run.summary["attribution"] = None
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
            run.model, run.prompt, run.task.causal, run.neurons, modes=causal.ablate_modes,
            group_by=run.task.group_by, positive=positive, n_random=causal.n_random, **controls,
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
            run.model, run.prompt, run.task.causal, rankings, ks=causal.dose_response,
            n_random=causal.n_random, **controls,
        )  # fmt: skip
        write_csv(table, run.out / "dose_response.csv")
        run.lap("dose_response")
    if causal.steering:
        curve = steering_curve(
            run.model, run.prompt, run.task.causal, run.neurons,
            factors=list(causal.steering), n_random=causal.steering_random, **controls,
        )  # fmt: skip
        write_csv(curve, run.out / "steering.csv")
        run.lap("steering")


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
