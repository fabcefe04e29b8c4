"""The evidence a reader sees for each selected neuron, computed while the model is loaded.

``collect_evidence`` takes each neuron's extremal examples from the scan that selected it (which
kept them, ``scan(n_extremal=...)``) and its activations over a set of examples from the pass that
read them (in a study, the confirmation split's); it runs the model only on the union of the
extremal examples, for their token-level activations (``token_activations``). Without a scan
or activations it reads them with one more pass (``slot_activations``). It returns a ``NeuronEvidence``:
plain arrays and token strings that views (``sklens.viz``, render-only) and the report draw
from without a model. ``sklens run`` saves it as ``evidence.json``; ``sklens report`` reads it
back, so a report never reloads the task or the model.

``neuron_text_view`` and ``neuron_topk_view`` are the notebook shortcuts: collect, then render.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from sklens.atomic import write_text
from sklens.data.example import Example
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.scanning.activations import (
    at_selected_slot,
    example_record,
    extremal_indices,
    slot_activations,
    token_activations,
)
from sklens.scanning.result import Scan
from sklens.views.viz import OfflineHTML, neuron_labels, text_view, topk_view


@dataclass
class NeuronEvidence:
    """For each selected neuron ``j`` (the rows of a ``top_k`` table, in order):

    * ``labels[j]``: ``"L{layer} N{unit} @soft{slot}"`` (the site's letter: H, F, R, ...);
    * ``activations[i][j]``: its activation at its selected slot on example ``i`` of the set
      ``sample`` describes (the distribution figure's: the confirmation split in a study);
    * ``most[j]`` / ``least[j]``: its most and least activating example ids;
    * ``tokens[i]`` / ``token_activations[i][t][j]``: the token strings and per-token
      activations of each example in ``viewed`` (the union of the extremal examples), so any
      neuron's view is a column of them.
    * ``groups``: each of those examples' value of ``group_field`` (``None`` without one).
    """

    labels: list[str]
    activations: list[list[float]]
    most: list[list[int]]
    least: list[list[int]]
    viewed: list[int]
    tokens: list[list[str]]
    token_activations: list[list[list[float]]]
    group_field: str | None
    groups: list[Any]
    sample: str = "the selection set (in-sample)"

    def at_slot(self) -> np.ndarray:
        """``[n_examples, n_neurons]`` activations at each neuron's selected slot."""
        return np.asarray(self.activations, dtype=np.float64)

    def view_data(self, j: int, n: int | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """Neuron ``j``'s most then least activating examples (``n`` of each at most): their
        tokens and ``[pos, 1]`` activations, as ``viz.text_view`` takes them."""
        where = {idx: row for row, idx in enumerate(self.viewed)}
        chosen = self.most[j][:n] + self.least[j][:n]
        tokens = [self.tokens[where[i]] for i in chosen]
        acts = [np.asarray(self.token_activations[where[i]])[:, [j]] for i in chosen]
        return tokens, acts

    def save(self, path: str | os.PathLike) -> Path:
        write_text(path, json.dumps(asdict(self), default=str))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronEvidence:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} is not an evidence file written by sklens ({err})") from err


def collect_evidence(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    n: int = 5,
    group_field: str | None = None,
    batch_size: int = 8,
    kept: Scan | None = None,
    spread: tuple[Sequence[Example], Tensor, str] | None = None,
) -> tuple[NeuronEvidence, pd.DataFrame]:
    """The evidence for the neurons of a ``top_k`` table and the extremal-examples table.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt.
        examples: the examples to rank (the scan's own examples give in-sample extremes).
        neurons: a ``Scan.top_k`` table (its ``slot`` column is each neuron's selected slot).
        n: most and least activating examples per neuron.
        group_field: a meta field whose value each example's activation is grouped by.
        batch_size: examples per forward pass.
        kept: the scan of ``examples`` that selected ``neurons``, if it kept at least ``n``
            extremal examples (``scan(n_extremal=...)``): they are read from it, with no pass
            over ``examples``.
        spread: ``(examples, activations [n_examples, n_neurons], description)``: the
            activations the distribution figure shows (e.g. the confirmation split's, from
            ``read_neurons``). Default: every example of ``examples`` (a pass over them).

    Only the extremal examples themselves are run again, for their token-level activations.

    Returns:
        ``(evidence, table)``: the ``NeuronEvidence`` and one row per (neuron, direction, rank)
        with the example's text, activation and scalar meta fields (``examples.csv``).
    """
    examples = list(examples)
    if kept is not None and (kept.extremes is None or kept.extremes.n < n):
        raise ValueError(
            f"the scan kept {kept.settings.n_extremal} extremal examples per neuron, fewer than "
            f"n={n}: scan with n_extremal={n}, or leave kept out to find them with a pass"
        )
    if spread is None or kept is None:
        acts = slot_activations(model, prompt, examples, neurons, batch_size=batch_size)
        picked = at_selected_slot(acts, neurons)
    if kept is None:
        extremes = extremal_indices(acts, neurons, n)
        values = [
            {i: float(picked[i, j]) for i in range(len(examples))} for j in range(len(neurons))
        ]
    else:
        extremes, values = kept_extremes(kept, examples, neurons, n)
    if spread is None:
        spread = (examples, picked, f"the selection set (in-sample, n={len(examples)})")
    viewed = sorted({i for most, least in extremes for i in most + least})
    per_token = token_activations(
        model, prompt, [examples[i] for i in viewed], neurons, batch_size=batch_size
    )
    spread_examples, spread_acts, spread_sample = spread
    evidence = NeuronEvidence(
        labels=neuron_labels(neurons),
        activations=spread_acts.tolist(),
        most=[most for most, _ in extremes],
        least=[least for _, least in extremes],
        viewed=viewed,
        tokens=[tokens for tokens, _ in per_token],
        token_activations=[a.tolist() for _, a in per_token],
        group_field=group_field,
        groups=[e.meta.get(group_field) if group_field else None for e in spread_examples],
        sample=spread_sample,
    )
    return evidence, _extremal_table(examples, neurons, extremes, values)


def _extremal_table(
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    extremes: Sequence[tuple[list[int], list[int]]],
    values: Sequence[dict[int, float]],
) -> pd.DataFrame:
    """One row per (unit, direction, rank): the example's text, activation and scalar meta
    fields (``examples.csv``); ``unit_rank`` is the unit's row in ``neurons``."""
    rows = []
    for j, (row, chosen) in enumerate(zip(neurons.itertuples(), extremes, strict=True)):
        for direction, indices in zip(("most", "least"), chosen, strict=True):
            for rank, idx in enumerate(indices):
                rows.append(
                    {
                        "unit_rank": j,
                        "layer": row.layer,
                        "unit": row.unit,
                        "slot": row.slot,
                        "direction": direction,
                        "rank": rank,
                        **example_record(examples[idx], idx, values[j][idx]),
                    }
                )
    return pd.DataFrame(rows)


def kept_extremes(
    kept: Scan, examples: Sequence[Example], neurons: pd.DataFrame, n: int
) -> tuple[list[tuple[list[int], list[int]]], list[dict[int, float]]]:
    """Each neuron's most and least activating example ids (as ``extremal_indices``) and their
    activations, from the extremes a scan kept."""
    extremes, values = [], []
    for row in neurons.itertuples():
        most = kept.top_examples(examples, layer=row.layer, unit=row.unit, slot=row.slot, n=n)
        least = kept.top_examples(
            examples, layer=row.layer, unit=row.unit, slot=row.slot, n=n, largest=False
        )
        ids = most.example.tolist()
        extremes.append((ids, [i for i in least.example.tolist() if i not in ids]))
        values.append(
            dict(zip(most.example, most.activation, strict=True))
            | dict(zip(least.example, least.activation, strict=True))
        )
    return extremes, values


def neuron_text_view(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    n: int = 5,
    batch_size: int = 8,
) -> OfflineHTML:
    """Token-level activations of every unit over the union of their most and least
    activating examples (circuitsvis ``text_neuron_activations``; a selector picks the unit).

    Args:
        model: the model the units belong to.
        prompt: the trained soft prompt (None: the plain model).
        examples: the examples to draw the extremes from.
        neurons: a ``top_k`` table (of any site).
        n: most and least activating examples per unit.
        batch_size: examples per forward pass.

    Returns:
        The view, rendered offline (the circuitsvis bundle inside the package).
    """
    evidence, _ = collect_evidence(model, prompt, examples, neurons, n=n, batch_size=batch_size)
    acts = [np.asarray(a) for a in evidence.token_activations]
    return text_view(evidence.tokens, acts, evidence.labels)


def neuron_topk_view(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    n: int = 5,
    batch_size: int = 8,
) -> OfflineHTML:
    """For each unit, its ``n`` most activating examples, token by token (circuitsvis
    ``topk_samples``).

    Args:
        model: the model the units belong to.
        prompt: the trained soft prompt (None: the plain model).
        examples: the examples to draw the extremes from.
        neurons: a ``top_k`` table (of any site).
        n: most and least activating examples per unit.
        batch_size: examples per forward pass.

    Returns:
        The view, rendered offline (the circuitsvis bundle inside the package).
    """
    evidence, _ = collect_evidence(model, prompt, examples, neurons, n=n, batch_size=batch_size)
    where = {idx: row for row, idx in enumerate(evidence.viewed)}
    tokens = [[evidence.tokens[where[i]] for i in most] for most in evidence.most]
    acts = [
        [np.asarray(evidence.token_activations[where[i]])[:, j] for i in most]
        for j, most in enumerate(evidence.most)
    ]
    return topk_view(tokens, acts, evidence.labels)
