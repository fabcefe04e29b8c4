"""Calibration and power of sklens's statistics on planted data (no model needed).

Drives sklens's own accumulators (``sklens.scan_activations``, the same code the scan folds in its
hooks) with simulated activations where the truth is known, and reports:

1. **Within-group power**: 4 groups × 30 examples, metric = group effect + noise; one neuron tracks
   the metric *within* groups (within r ≈ 0.85), ``--trackers`` of 200 neurons track only the
   group. Share of trials where the planted neuron is FWER-significant (p ≤ 0.05) with the
   grouped scan (``permutation_groups``), and with what sklens did before: the marginal r
   against within-block permutations.
2. **FWER under the within-group null** (no planted neuron; trackers present).
3. **Per-neuron p calibration** under the complete null with three neuron types (20 independent
   slots; one value copied to all slots; a sparse 3% spike): share of neurons with p ≤ 0.05 for the
   per-neuron permutation p and for the pooled-null p, and P(any rejection) for FWER, BH and BY.

    python benchmarks/calibration.py --trials 100 --permutations 199
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, write_results

import sklens


def _grouped(rng: np.random.Generator, trackers: int, planted: bool):
    n, d, k = 120, 200, 2
    groups = np.repeat(np.arange(4), n // 4)
    effect = np.array([-3.0, -1.0, 1.0, 3.0])[groups]
    noise = rng.normal(size=n)
    acts = rng.normal(size=(n, 1, k, d))
    if planted:
        acts[:, 0, :, 0] = (noise + 0.6 * rng.normal(size=n))[:, None]
    acts[:, 0, :, 1 : 1 + trackers] += 2 * effect[:, None, None]
    return torch.from_numpy(acts), torch.from_numpy(effect + noise), groups.tolist()


def _old_marginal_p(acts: torch.Tensor, values: torch.Tensor, perms: torch.Tensor) -> float:
    """FWER p of neuron 0 under sklens's former rule: marginal r, within-block permutations."""
    a = acts[:, 0].reshape(len(values), -1).numpy()
    a = (a - a.mean(0)) / a.std(0)

    def max_abs_r(y: np.ndarray) -> np.ndarray:
        z = (y - y.mean()) / y.std()
        return np.abs(a.T @ z / len(y)).reshape(-1, acts.shape[-1]).max(0)  # per neuron

    observed = max_abs_r(values.numpy())[0]
    null = [max_abs_r(values.numpy()[p]).max() for p in perms.numpy()]
    return (1 + np.sum(np.array(null) >= observed)) / (1 + len(null))


def within_group(trials: int, permutations: int, trackers: int) -> list[list[object]]:
    rng = np.random.default_rng(0)
    found_new = found_old = false_alarm = 0
    for t in range(trials):
        acts, values, groups = _grouped(rng, trackers, planted=True)
        scan = sklens.scan_activations(
            acts, values, n_permutations=permutations, groups=groups, permutation_seed=t
        )
        found_new += float(scan.p_values("max", "fwer")[0, 0]) <= 0.05
        found_old += _old_marginal_p(acts, values, scan.null.perms) <= 0.05
        acts, values, groups = _grouped(rng, trackers, planted=False)
        null = sklens.scan_activations(
            acts, values, n_permutations=permutations, groups=groups, permutation_seed=t
        )
        false_alarm += bool((null.p_values("max", "fwer") <= 0.05).any())
    return [
        ["power, within-group scan (planted neuron FWER p ≤ 0.05)", f"{found_new / trials:.3f}"],
        ["power, former marginal r + block permutations", f"{found_old / trials:.3f}"],
        ["FWER, within-group scan, no planted neuron", f"{false_alarm / trials:.3f}"],
    ]


def calibration(trials: int, permutations: int) -> list[list[object]]:
    rng = np.random.default_rng(1)
    n, k, per = 120, 20, 100
    names = ("20 independent slots", "identical slots", "sparse spike")
    neuron = {name: [] for name in names}
    pooled = {name: [] for name in names}
    any_reject = {"fwer": 0, "fdr_bh": 0, "fdr_by": 0}
    for t in range(trials):
        independent = rng.normal(size=(n, k, per))
        identical = np.repeat(rng.normal(size=(n, 1, per)), k, axis=1)
        spike = (rng.random(size=(n, 1, per)) < 0.03) * rng.normal(3, 1, (n, 1, per))
        sparse = np.repeat(spike, k, 1) + 1e-3 * rng.normal(size=(n, k, per))
        acts = torch.from_numpy(np.concatenate([independent, identical, sparse], -1)[:, None])
        scan = sklens.scan_activations(
            acts,
            torch.from_numpy(rng.normal(size=n)),
            n_permutations=permutations,
            permutation_seed=t,
        )
        p_unit = scan.p_values("max", "unit")[0].numpy()
        p_pooled = scan.p_values("max", "pooled")[0].numpy()
        for j, name in enumerate(names):
            part = slice(j * per, (j + 1) * per)
            neuron[name].append(np.mean(p_unit[part] <= 0.05))
            pooled[name].append(np.mean(p_pooled[part] <= 0.05))
        for method in any_reject:
            any_reject[method] += len(scan.significant(0.05, method)) > 0
    rows = [
        [
            f"share p ≤ 0.05, {name}: per-neuron p / pooled p",
            f"{np.mean(neuron[name]):.3f} / {np.mean(pooled[name]):.3f}",
        ]
        for name in names
    ]
    rows += [
        [f"P(any rejection at 0.05), {method}", f"{count / trials:.3f}"]
        for method, count in any_reject.items()
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--permutations", type=int, default=199)
    p.add_argument("--trackers", type=int, default=10)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    rows = within_group(args.trials, args.permutations, args.trackers)
    rows += calibration(args.trials, args.permutations)
    rows = [[*row, args.trials, args.permutations] for row in rows]
    write_results(
        "calibration", ["quantity", "value", "trials", "B"], rows, "cpu", results=args.results
    )


if __name__ == "__main__":
    main()
