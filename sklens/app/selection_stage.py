"""``sklens run --bootstrap B`` and ``--basis-rotations R``: two checks of the top-K the scan
selected (``sklens.confirm.selection``).

``--bootstrap`` asks whether the same examples, resampled, would select the same units: on the
selection split, with the scan's own metric values (as ``--contrast`` uses them), the share of
``B`` bootstrap resamples in which each top unit stays in the top-K under the study's rule
(``sklens.selection_stability``; ``selection_stability.csv``). ``--basis-rotations`` asks whether
the neuron basis privileges each top unit: on the confirmation split, held out from the selection,
its |r| against the best direction of ``R`` random bases of its layer and the held-out r of a
ridge probe of the whole layer (``sklens.basis_test``; ``basis.csv``).
"""

from __future__ import annotations

from sklens.app.run_state import StudyRun
from sklens.atomic import write_csv
from sklens.confirm.selection import basis_test, selection_stability
from sklens.scanning import metrics
from sklens.units.sites import unit_slot_label


def selection_stability_stage(run: StudyRun) -> None:
    """With ``--bootstrap B``: each top unit's stay share over ``B`` resamples of the selection
    split (``selection_stability.csv``, ``summary["selection_stability"]``)."""
    config = run.config
    if not config.confirm.bootstrap:
        return
    found = selection_stability(
        run.model, run.prompt, run.task.val,
        metrics.values(run.result.metric_values, name=run.metric.name), run.result,
        k=config.select.top_k, reduce=config.select.reduce, n_boot=config.confirm.bootstrap,
        seed=config.seed, batch_size=config.batch_size, progress=run.progress,
    )  # fmt: skip
    site = run.result.settings.site
    write_csv(found.table.assign(site=site), run.out / "selection_stability.csv")
    settings = found.settings
    run.summary["selection_stability"] = {
        "mean_stay_share": found.mean_stay,
        "stay_share": {
            unit_slot_label(site, r.layer, r.unit, r.slot): float(r.stay_share)
            for r in found.table.itertuples()
        },
        "k": settings["k"],
        "reduce": settings["reduce"],
        "n_boot": settings["n_boot"],
        "n_candidates": settings["n_candidates"],
        "assumption": settings["assumption"],
        "outside_share": found.outside_share,
        "examples": f"the selection split (n={len(run.task.val)}), the scan's metric values; "
        "in-sample",
    }
    run.lap("selection_stability")


def basis_stage(run: StudyRun) -> None:
    """With ``--basis-rotations R``: each top unit against ``R`` random bases of its layer and
    the layer's held-out ridge probe, on the confirmation split (``basis.csv``,
    ``summary["basis_test"]``)."""
    config = run.config
    if not config.confirm.basis_rotations:
        return
    found = basis_test(
        run.model, run.prompt, run.task.confirm, run.metric, run.neurons,
        n_rotations=config.confirm.basis_rotations, seed=config.seed,
        batch_size=config.batch_size, progress=run.progress,
    )  # fmt: skip
    table = found.table
    write_csv(table.assign(site=found.settings["site"]), run.out / "basis.csv")
    run.summary["basis_test"] = {
        "n_units": len(table),
        "n_p_rotation_0.05": int((table["p_rotation"] <= 0.05).sum()),
        "mean_abs_r_unit": float(table["r_unit"].abs().mean()),
        "mean_rotation_best_q95": float(table["rotation_best_q95"].mean()),
        "mean_probe_r_heldout": float(table["probe_r_heldout"].mean()),
        "n_rotations": found.settings["n_rotations"],
        "n_probe_fit": found.settings["n_fit"],
        "n_probe_test": found.settings["n_test"],
        "examples": f"the confirmation split (held out, n={len(run.task.confirm)})",
    }
    run.lap("basis_test")
