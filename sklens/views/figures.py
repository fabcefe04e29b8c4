"""The paper's figures, with matplotlib's object API (no pyplot, no global backend state).

* ``kde_by_group`` — a neuron's activation density per group of a meta field (Figures 2, 3, 5);
* ``score_histogram`` — every neuron's score with the top-K threshold marked (Figures 4, 6, 7),
  and the permutation null when the scan has one;
* ``training_curve`` — the soft prompt's train/validation loss;
* ``layer_position_heatmap`` — where high-|r| (layer, slot) pairs sit;
* ``steering`` — a steering curve: the selected units against random sets (``sklens.causal.steering``);
* ``dose_response`` — the change against k for each ranking's top-k, beside random sets.
* ``contrast_scatter`` — every unit's score under the trained prompt against a baseline
  (``sklens.contrast``).

Each returns a ``NotebookFigure``, a ``matplotlib.figure.Figure`` that shows itself in a notebook
without ``%matplotlib inline``; ``save`` writes PNG and SVG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sklens.atomic import atomic_path
from sklens.stats.ranking import Reduce


class NotebookFigure(Figure):
    """A Figure that displays in a fresh notebook: IPython registers a PNG printer for ``Figure``
    only after ``%matplotlib inline`` or a first pyplot figure, and otherwise shows
    ``<Figure size ...>``; for objects with no printer it asks ``_repr_png_``, given here. With
    the inline backend active its printer is used as before (one image, not two)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def plain(text: str) -> str:
    """``text`` shown as typed: matplotlib reads ``$...$`` as mathtext and fails on an unknown
    command (a group called ``$\\foo$``), so every ``$`` in user text is escaped."""
    return str(text).replace("$", r"\$")


def gaussian_kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density on ``grid`` with Scott's bandwidth."""
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    bandwidth = max(std * len(values) ** (-1 / 5), 1e-3 * (np.abs(values).max() + 1e-9))
    z = (grid[:, None] - values[None, :]) / bandwidth
    return np.exp(-0.5 * z**2).sum(1) / (len(values) * bandwidth * np.sqrt(2 * np.pi))


def kde_by_group(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    title: str = "",
    xlabel: str = "activation",
) -> NotebookFigure:
    """Density of ``values`` for each group (any number of groups), with a rug of the points."""
    values, groups = np.asarray(values, dtype=float), np.asarray([str(g) for g in groups])
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} group labels")
    fig = NotebookFigure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    pad = 0.1 * (values.max() - values.min() + 1e-9)
    grid = np.linspace(values.min() - pad, values.max() + pad, 400)
    for g in sorted(set(groups)):
        members = values[groups == g]
        line = ax.plot(grid, gaussian_kde(members, grid), label=plain(f"{g} (n={len(members)})"))[0]
        ax.plot(
            members,
            np.full(len(members), -0.02 * ax.get_ylim()[1]),
            "|",
            color=line.get_color(),
            alpha=0.5,
        )
    ax.set(title=plain(title), xlabel=plain(xlabel), ylabel="density")
    ax.legend(fontsize=8)
    return fig


def score_histogram(
    scan: Any, k: int = 10, reduce: Reduce = "max", bins: int = 100
) -> NotebookFigure:
    """Histogram of all neuron scores, the top-``k`` |score| threshold and, with a permutation
    null, the null's pooled scores and the 95% quantile of its max statistic."""
    score, _ = scan.scores(reduce)
    values = score[~score.isnan()].numpy()
    threshold = float(np.sort(np.abs(values))[-k]) if len(values) >= k else float("nan")
    fig = NotebookFigure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, density=True, alpha=0.7, label=f"{len(values)} neurons")
    if scan.null is not None:
        pooled = scan.null.scores[reduce].flatten()
        pooled = pooled[~pooled.isnan()].numpy()
        ax.hist(
            pooled,
            bins=bins,
            density=True,
            histtype="step",
            color="black",
            label=f"permutation null (B={scan.null.n_permutations})",
        )
    lines = [("red", "--", f"top-{k} threshold |score| = {threshold:.2f}", threshold)]
    if scan.null is not None:  # a unit beyond it passes the max-statistic null (FWER 0.05)
        max_95 = float(np.quantile(scan.null.max_null(reduce).numpy(), 0.95))
        lines.append(("black", ":", f"null's max |score|, 95% = {max_95:.2f}", max_95))
    for color, style, label, x in lines:
        for sign in (1, -1):
            ax.axvline(sign * x, color=color, linestyle=style, label=label if sign == 1 else None)
    ax.set(
        xlabel=f"neuron score ({reduce} over slots)",
        ylabel="density",
        title=plain(f"score distribution, metric {scan.settings.metric}"),
    )
    ax.legend(fontsize=8)
    return fig


def predictive_vs_causal(
    score: np.ndarray, effect: np.ndarray, marked: Sequence[tuple[float, float, str]] = ()
) -> NotebookFigure:
    """Every unit's |score| (the scan's in-sample ranking) against its largest |effect| over the
    slots (attribution), both ``[layer, unit]`` (or flat), the ``marked`` units — ``(x, y,
    label)`` — drawn and named: whether the units that predict the metric are the ones that move
    the model."""
    score, effect = np.ravel(score), np.ravel(effect)
    fig = NotebookFigure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(score, effect, s=2, alpha=0.3, rasterized=True, label=f"{score.size} units")
    for x, y, label in marked:
        ax.scatter([x], [y], s=14, color="C3")
        ax.annotate(plain(label), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xlabel="|score| (in-sample r, the scan's ranking)",
        ylabel="largest |effect| over slots (attribution)",
        title="predictive against causal",
    )
    ax.legend(fontsize=8)
    return fig


def _changes_figure(table: Any, measure: str, group: str) -> tuple[str, Any, NotebookFigure, Any]:
    """A causal table's change column of ``measure``, its rows of ``group`` and an empty figure
    to draw them on (steering curves and dose-responses)."""
    column = f"d_{measure}"
    if column not in table:
        raise ValueError(f"the table has no {column!r}; measures: loss, metric, accuracy, ...")
    fig = NotebookFigure(figsize=(5.5, 3.6), layout="constrained")
    return column, table[table.group == group], fig, fig.add_subplot()


def dose_response(table: Any, measure: str = "loss", group: str = "all") -> NotebookFigure:
    """A ``dose_response`` table: each ranking's top-k change of ``measure`` against k, with its
    95% interval, beside the band of its random sets (2.5% to 97.5% of their changes) and their
    median: whether the change grows with k faster than for random units."""
    column, part, fig, ax = _changes_figure(table, measure, group)
    for i, (name, ranking) in enumerate(part.groupby("ranking", sort=False)):
        randoms = ranking[ranking.set.str.startswith("random_")].groupby("k")[column]
        low, high = randoms.quantile(0.025), randoms.quantile(0.975)
        ax.fill_between(low.index, low.to_numpy(), high.to_numpy(), color=f"C{i}", alpha=0.12)
        median = randoms.median()
        ax.plot(median.index, median.to_numpy(), ls="--", color=f"C{i}", lw=0.8)
        chosen = ranking[ranking.set == "selected"].sort_values("k")
        error = [chosen[column] - chosen[f"{column}_lo"], chosen[f"{column}_hi"] - chosen[column]]
        ax.errorbar(chosen.k, chosen[column], yerr=error, fmt="o-", color=f"C{i}",
                    label=f"{plain(str(name))} top-k (random: dashed, band)")  # fmt: skip
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set(xlabel="k (units ablated)", ylabel=f"change of {plain(measure)}")
    ax.legend(fontsize=8)
    return fig


def contrast_scatter(
    trained: np.ndarray,
    baseline: np.ndarray,
    marked: Sequence[tuple[float, float, str]] = (),
    *,
    name: str = "baseline",
) -> NotebookFigure:
    """Every unit's score under the trained prompt against its score under the baseline ``name``
    (``sklens.contrast``), the diagonal where the prompt changes nothing, and the ``marked``
    units — ``(x, y, label)``, e.g. the top-K by |diff| — drawn and named."""
    trained, baseline = np.asarray(trained, dtype=float), np.asarray(baseline, dtype=float)
    fig = NotebookFigure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(trained, baseline, s=2, alpha=0.3, rasterized=True, label=f"{len(trained)} units")
    finite = np.concatenate([trained, baseline])
    finite = finite[np.isfinite(finite)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (-1.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="no change")
    for x, y, label in marked:
        ax.scatter([x], [y], s=14, color="C3")
        ax.annotate(plain(label), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(
        xlabel="score under the trained prompt",
        ylabel=plain(f"score under the baseline ({name})"),
        title=plain(f"trained prompt against {name}"),
    )
    ax.legend(fontsize=8)
    return fig


def training_curve(history: Sequence[dict[str, float | int]]) -> NotebookFigure:
    """Training loss per step and validation loss where it was measured."""
    fig = NotebookFigure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="train (batch)", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation")
    ax.set(xlabel="step", ylabel="mean completion cross-entropy", title="soft-prompt training")
    ax.legend(fontsize=8)
    return fig


def layer_position_heatmap(scan: Any, threshold: float | None = None) -> NotebookFigure:
    """Count of neurons with ``|r| ≥ threshold`` per (layer, slot); default threshold: the
    100th-largest |r| of the scan."""
    corr = scan.corr.abs().nan_to_num(0.0)
    if threshold is None:
        flat = corr.flatten()
        threshold = float(flat.topk(min(100, len(flat))).values[-1])
    counts = (corr >= threshold).sum(1).numpy()  # (layers, slots)
    fig = NotebookFigure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, aspect="auto", cmap="viridis", origin="lower")
    ax.set(xlabel="soft-prompt slot", ylabel="layer", title=f"neurons with |r| ≥ {threshold:.2f}")
    ax.set_yticks(range(len(scan.layers)), [str(L) for L in scan.layers], fontsize=6)
    fig.colorbar(image, ax=ax, label="count")
    return fig


def save(fig: Figure, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically."""
    stem = Path(stem)
    paths = (stem.with_suffix(".png"), stem.with_suffix(".svg"))
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120)
    return paths


def steering(table: Any, measure: str = "loss", group: str = "all") -> NotebookFigure:
    """A ``steering_curve`` table: the selected units' mean change of ``measure`` (``loss``,
    ``metric``, ``accuracy``, ``accuracy_per_token``) against the factor, with its 95% interval,
    beside every random set's curve and the random sets' median."""
    column, part, fig, ax = _changes_figure(table, measure, group)
    randoms = part[part.set.str.startswith("random_")]
    for _, curve in randoms.groupby("set"):
        curve = curve.sort_values("factor")
        ax.plot(curve.factor, curve[column], color="0.75", lw=0.8)
    median = randoms.groupby("factor")[column].median()
    ax.plot(median.index, median.to_numpy(), color="0.35", ls="--", label="random sets (median)")
    chosen = part[part.set == "selected"].sort_values("factor")
    ax.fill_between(
        chosen.factor, chosen[f"{column}_lo"], chosen[f"{column}_hi"], color="C3", alpha=0.2
    )
    ax.plot(chosen.factor, chosen[column], "o-", color="C3", label="selected (95% CI)")
    ax.axhline(0, color="k", lw=0.5)
    mode = chosen["mode"].iloc[0] if len(chosen) else "scale"
    ax.set_xlabel("activation × factor" if mode == "scale" else "activation + shift")
    ax.set_ylabel(f"change of {plain(measure)}")
    ax.legend(fontsize=8)
    return fig
