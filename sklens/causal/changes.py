"""A causal check's table (``sklens.causal_check``): each edit's changes from the unedited model
per group of examples, with bootstrap intervals, and for the tested sets (the selected one and the
positive control) what the changes say against the random sets: the rank p, the smallest change
the rank test could detect (``detectable``), the excess over the random median with its interval,
and the bound the data leave (``against_randoms``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sklens.stats import bootstrap_ci, rank_p

# evaluate's per-example columns whose change a causal check reports, and their names there
_CHANGES = {
    "metric": "metric",
    "loss": "loss",
    "correct": "accuracy",
    "correct_per_token": "accuracy_per_token",
}


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if not np.isnan(values).all() else np.nan


class Changes:
    """A causal check's table, row by row: each edit's changes from the unedited evaluation
    ``base``, per group, with bootstrap intervals drawn in table order from one generator."""

    def __init__(
        self,
        base: pd.DataFrame,
        groups: dict[str, np.ndarray],
        match_scale: bool,
        n_boot: int,
        seed: int,
        unprompted: pd.DataFrame | None = None,
    ):
        self.base, self.groups, self.match_scale, self.n_boot = base, groups, match_scale, n_boot
        self.rng = np.random.default_rng(seed)
        self.records: list[dict[str, Any]] = []
        self.prompt_effect = (
            (unprompted["loss"] - base["loss"]).to_numpy() if unprompted is not None else None
        )

    def add(self, mode: str, name: str, n_neurons: int, edited: pd.DataFrame) -> None:
        """One row per group for the edit of set ``name`` (``n_neurons`` units) by ``mode``."""
        base = self.base
        deltas = {k: (edited[k] - base[k]).to_numpy() for k in _CHANGES}
        for group, mask in self.groups.items():
            row = {
                "mode": mode,
                "set": name,
                "group": group,
                "n": int(mask.sum()),
                "n_neurons": n_neurons,
                "match_scale": self.match_scale,
                "accuracy_base": _mean(base["correct"].to_numpy()[mask]),
                "accuracy_per_token_base": _mean(base["correct_per_token"].to_numpy()[mask]),
            }
            for k, key in _CHANGES.items():
                d = deltas[k][mask]
                row[f"d_{key}"] = _mean(d)
                row[f"d_{key}_lo"], row[f"d_{key}_hi"] = bootstrap_ci(
                    np.mean, d[~np.isnan(d)], n_boot=self.n_boot, seed=self.rng
                )
            self.records.append(row)
        self._extras(edited)

    def _extras(self, edited: pd.DataFrame) -> None:
        """The columns added after the changes, on the rows just added (drawn after theirs, so
        the changes' intervals come from the generator as before): the share of multiple-choice
        examples whose chosen answer changes, and the prompt's own effect on the loss."""
        before, after = self.base["chosen"].to_numpy(), edited["chosen"].to_numpy()
        rows = self.records[-len(self.groups) :]
        for row, mask in zip(rows, self.groups.values(), strict=True):
            asked = mask & ~np.isnan(before)
            changed = (after[asked] != before[asked]).astype(float)
            row["choice_changed"] = _mean(changed) if asked.any() else np.nan
            row["choice_changed_lo"], row["choice_changed_hi"] = bootstrap_ci(
                np.mean, changed, n_boot=self.n_boot, seed=self.rng
            )
            effect = self.prompt_effect
            row["prompt_effect_loss"] = _mean(effect[mask]) if effect is not None else np.nan

    def table(self) -> pd.DataFrame:
        """The rows, and on the selected and positive ones, for each change, its rank p-value
        among the random sets' changes of the same mode and group, then what the random sets
        let the test detect and what the data exclude (``against_randoms``)."""
        table = pd.DataFrame(self.records)
        for key in _CHANGES.values():
            table[f"p_{key}"] = np.nan
        extra = [f"{c}_{key}" for c in _AGAINST for key in _CHANGES.values()]
        table[extra] = np.nan
        for _, part in table.groupby(["mode", "group"]):
            randoms = part[part.set.str.startswith("random_")]
            for i in part.index[part.set.isin(("selected", "positive"))]:
                for key in _CHANGES.values():
                    row = table.loc[i]
                    found = against_randoms(row, key, randoms[f"d_{key}"].to_numpy())
                    table.loc[i, [f"{c}_{key}" for c in ("p", *_AGAINST)]] = found
        return table


_AGAINST = ("mde", "excess", "excess_lo", "excess_hi", "bound")


def against_randoms(
    row: pd.Series, key: str, randoms: np.ndarray, alpha: float = 0.05
) -> list[float]:
    """For change ``key`` of a tested row: its rank p among ``randoms``; the smallest distance
    from their median that p could reach ``alpha`` beyond (``detectable``); the excess over the
    median with the row's interval; and the bound, the largest |excess| that interval allows."""
    randoms = randoms[~np.isnan(randoms)]
    if len(randoms) == 0:
        return [np.nan] * 6
    median = float(np.median(randoms))
    d, lo, hi = (float(row[f"d_{key}{end}"]) for end in ("", "_lo", "_hi"))
    p = rank_p(d, randoms)
    excess = [d - median, lo - median, hi - median]
    return [p, detectable(randoms, alpha), *excess, max(abs(excess[1]), abs(excess[2]))]


def detectable(randoms: np.ndarray, alpha: float = 0.05) -> float:
    """The smallest |change − median of ``randoms``| that ``rank_p`` calls significant at
    ``alpha`` is anything beyond this value: the ``m``-th largest distance of a random change
    from the median, where at most ``m = ⌊alpha·(n + 1)⌋ − 1`` random changes may lie as far
    out; infinite where ``m < 0`` (fewer than ``1/alpha − 1`` random sets)."""
    randoms = np.asarray(randoms, dtype=np.float64)
    randoms = randoms[~np.isnan(randoms)]
    m = int(np.floor(alpha * (len(randoms) + 1) + 1e-9)) - 1
    if m < 0:
        return np.inf
    far = np.sort(np.abs(randoms - np.median(randoms)))[::-1]
    return float(far[m]) if m < len(far) else 0.0
