"""Seed stability: do prompts trained with different seeds find the same neurons?

Trains one prompt per seed, scans each, and compares their top-K sets (pairwise Jaccard), the
rank correlation of all neuron scores, and a consensus ranking (mean and min |score| over seeds,
as the 2022 Skill-Neuron code aggregates runs). Two baselines show what training adds: an
untrained random prompt, and the activation at the instruction's last token with no prompt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.prompt.training import train_soft_prompt
from sklens.scanning.metrics import MetricLike
from sklens.scanning.result import Scan
from sklens.scanning.scan import scan
from sklens.stats.measures import spearman
from sklens.stats.ranking import Reduce, layer_and_unit
from sklens.units.sites import SiteLike


@dataclass
class Stability:
    """Per-run scans and top-K tables, their pairwise overlaps, and consensus neurons."""

    scans: dict[str, Scan]
    tops: dict[str, pd.DataFrame]
    jaccard: pd.DataFrame
    rank_corr: pd.DataFrame
    consensus: pd.DataFrame

    def summary(self) -> dict[str, float]:
        """Mean pairwise Jaccard and rank correlation among the trained seeds."""
        seeds = [n for n in self.tops if n.startswith("seed")]
        pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
        return {
            "mean_jaccard": float(
                sum(self.jaccard.loc[a, b] for a, b in pairs) / max(len(pairs), 1)
            ),
            "mean_rank_corr": float(
                sum(self.rank_corr.loc[a, b] for a, b in pairs) / max(len(pairs), 1)
            ),
        }


def _neuron_set(table: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(table.layer, table.unit, strict=True))


def seed_stability(
    model: Model,
    train: Sequence[Example],
    val: Sequence[Example],
    metric: MetricLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    k: int = 10,
    reduce: Reduce = "max",
    baselines: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    site: SiteLike | None = None,
    trained: Mapping[int, SoftPrompt] | None = None,
    checkpoints: str | os.PathLike | None = None,
    **train_kwargs: Any,
) -> Stability:
    """Train a prompt per seed (``train_kwargs`` go to ``train_soft_prompt``) and compare.

    Args:
        model: a HookedTransformer or TransformerBridge.
        train: the training examples, the same for every seed.
        val: the examples every seed's prompt is scanned on.
        metric: the auxiliary metric, as ``scan`` takes it.
        seeds: at least two training seeds.
        k: the size of the top-K compared.
        reduce: the ranking rule (``"max"`` or ``"absmax"``).
        baselines: also scan an untrained prompt and the last instruction token.
        batch_size: examples per forward pass.
        progress: show tqdm bars.
        site: what a unit is (``sklens.sites``; default MLP neurons), the same in every scan.
        trained: prompts already trained with these ``train_kwargs``, by seed (a study's own
            prompt): used instead of training that seed again.
        checkpoints: a folder for each seed's training checkpoint (``seed<N>/``), so a killed
            study resumes each training where it stopped (``train_soft_prompt``).
        **train_kwargs: passed to ``train_soft_prompt`` (``steps``, ``lr``, ``n_slots``, ...).

    Returns:
        A ``Stability``: each scan's top-K, pairwise Jaccard overlap and rank correlation of all
        scores, and the consensus neurons.
    """
    if len(seeds) < 2:
        raise ValueError("seed stability needs at least two seeds")
    scans: dict[str, Scan] = {}
    n_slots = train_kwargs.get("n_slots", 20)
    options = {"batch_size": batch_size, "progress": progress}
    trained = dict(trained or {})
    if set(trained) - set(seeds):
        raise ValueError(
            f"trained holds prompts of seeds {sorted(set(trained) - set(seeds))} that are not "
            f"among seeds={list(seeds)}: add them to seeds or leave them out of trained"
        )
    for seed in seeds:
        if seed in trained:
            prompt = trained[seed]
        else:
            folder = None if checkpoints is None else Path(checkpoints) / f"seed{seed}"
            prompt = train_soft_prompt(
                model, train, seed=seed, batch_size=batch_size, progress=progress,
                checkpoint_dir=folder, **train_kwargs,
            )  # fmt: skip
        scans[f"seed{seed}"] = scan(model, prompt, val, metric, site=site, **options)
    if baselines:
        untrained = SoftPrompt.init_for(model, n_slots, seed=seeds[0])
        scans["untrained"] = scan(model, untrained, val, metric, site=site, **options)
        scans["last_token"] = scan(model, None, val, metric, site=site, **options)
    return compare_scans(scans, k=k, reduce=reduce)


def compare_scans(scans: dict[str, Scan], *, k: int = 10, reduce: Reduce = "max") -> Stability:
    """Compare finished scans of the same examples: top-K Jaccard, rank correlation of all
    neuron scores, and the consensus of the runs named ``seed*`` (baselines under other names).

    ``seed_stability`` trains and scans, then calls this; a caller that already has one scan per
    seed (a study that trained them for other reasons) compares them without training again.
    """
    seed_names = [n for n in scans if n.startswith("seed")]
    if len(seed_names) < 2:
        raise ValueError(f"need at least two scans named 'seed*', got {list(scans)}")
    tops = {name: s.top_k(k, reduce) for name, s in scans.items()}
    names = list(scans)
    scores = torch.stack(
        [scans[n].scores(reduce)[0].abs().nan_to_num(0.0).flatten() for n in names], 1
    )
    rank_corr = pd.DataFrame(
        [
            [float(spearman(scores[:, [i]], scores[:, j])[0]) for j in range(len(names))]
            for i in range(len(names))
        ],
        index=names,
        columns=names,
    )
    jaccard = pd.DataFrame(
        [
            [
                len(_neuron_set(tops[a]) & _neuron_set(tops[b]))
                / len(_neuron_set(tops[a]) | _neuron_set(tops[b]))
                for b in names
            ]
            for a in names
        ],
        index=names,
        columns=names,
    )
    per_seed = torch.stack([scans[n].scores(reduce)[0].abs() for n in seed_names])  # (S, L, d)
    mean, least = per_seed.nanmean(0), per_seed.amin(0)
    flat = mean.nan_to_num(-1.0).flatten().topk(k).indices
    rows, units = layer_and_unit(flat, mean.shape[1])
    layers = scans[seed_names[0]].layers
    consensus = pd.DataFrame(
        {
            "layer": [layers[r] for r in rows.tolist()],
            "unit": units.tolist(),
            "mean_abs_score": mean.flatten()[flat].tolist(),
            "min_abs_score": least.flatten()[flat].tolist(),
            "site": scans[seed_names[0]].settings.site,
        }
    )
    return Stability(scans, tops, jaccard, rank_corr, consensus)
