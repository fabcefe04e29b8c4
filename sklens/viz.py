"""circuitsvis views of selected neurons, rendered with no network.

circuitsvis's default HTML imports its JavaScript from a CDN and probes the internet on every
render; an offline notebook or a shared report then shows a blank box. Every view here is an
``OfflineHTML``: it renders from the JavaScript bundle that ships inside the circuitsvis package.

Axis order everywhere: examples → tokens → neurons; neurons are labelled ``L{layer} N{neuron}``
(with the scan's slot as ``@soft{k}``) so the real ids survive circuitsvis's renumbering.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from circuitsvis.activations import text_neuron_activations
from circuitsvis.topk_samples import topk_samples
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from torch import Tensor

from sklens.activations import as_neuron_list, slot_activations, token_activations
from sklens.atomic import write_text
from sklens.data.example import Example

_RENDER = re.compile(r"\n\s*CircuitsVis\.render\(")


class OfflineHTML:
    """A circuitsvis view that always uses the embedded bundle (no CDN, no internet probe)."""

    def __init__(self, rendered: RenderedHTML):
        self.rendered = rendered

    def _repr_html_(self) -> str:
        return self.rendered.local_src

    def __str__(self) -> str:
        return self.rendered.local_src

    def save(self, path: str | os.PathLike) -> Path:
        write_text(
            path,
            f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{self}</body></html>",
        )
        return Path(path)

    def split(self) -> tuple[str, str]:
        """``(bundle, mount)``: the JavaScript bundle, and the element plus its render call.

        A report includes the bundle once as a classic script (defining ``CircuitsVis``) and any
        number of mounts after it, instead of 1.3 MB per view.
        """
        src = self.rendered.local_src
        head, _, body = src.partition('<script crossorigin type="module">')
        match = _RENDER.search(body)
        if match is None:
            raise ValueError("unexpected circuitsvis HTML: no CircuitsVis.render call")
        bundle = body[: match.start()]
        call = body[match.start() :].replace("</script>", "").strip()
        return bundle, f"{head.strip()}\n<script>{call}</script>"


def neuron_labels(neurons: pd.DataFrame | Sequence[tuple[int, int]]) -> list[str]:
    if isinstance(neurons, pd.DataFrame) and "position" in neurons:
        return [
            f"L{L} N{i} @soft{p}"
            for L, i, p in zip(neurons.layer, neurons.neuron, neurons.position, strict=True)
        ]
    return [f"L{L} N{i}" for L, i in as_neuron_list(neurons)]


def _display(tokens: list[str], acts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Tokens and activations as views show them.

    Position 0 is an attention sink with activations ~100x the rest (|a| ≈ 3000 in SmolLM2);
    left in, it sets every colour scale, so views start at position 1. circuitsvis writes token
    text into ``innerHTML`` unescaped, so ``<soft0>`` (or any ``<b>`` or ``&`` in a text) would
    vanish or be parsed as markup: tokens are HTML-escaped here.
    """
    return [html.escape(t, quote=False) for t in tokens[1:]], acts[1:]


def extremal_indices(
    acts: Float[Tensor, "n_examples n_neurons n_slots"], neurons: pd.DataFrame, n: int
) -> list[list[int]]:
    """For each neuron row, its ``n`` most then ``n`` least activating examples at its slot,
    from ``slot_activations`` of those neurons (so a caller that has them pays no extra pass)."""
    out = []
    for j, position in enumerate(neurons["position"].tolist()):
        values = acts[:, j, position]
        most = values.argsort(descending=True)[:n].tolist()
        least = [i for i in values.argsort()[:n].tolist() if i not in most]
        out.append(most + least)
    return out


def _chosen(
    model: Any,
    prompt: Any,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    n: int,
    batch_size: int,
) -> list[list[int]]:
    acts = slot_activations(model, prompt, examples, neurons, batch_size=batch_size)
    return extremal_indices(acts, neurons, n)


def text_view(
    model: Any,
    prompt: Any,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    batch_size: int = 8,
) -> OfflineHTML:
    """Token-level activations of ``neurons`` over ``examples`` (a neuron selector; soft slots
    shown as ``<soft0>``...)."""
    tokens, acts = [], []
    for toks, a in token_activations(model, prompt, examples, neurons, batch_size=batch_size):
        toks, a = _display(toks, a.numpy())
        tokens.append(toks)
        acts.append(a[:, None, :])  # (tokens, 1, neurons)
    return OfflineHTML(
        text_neuron_activations(
            tokens,
            acts,
            first_dimension_name="Set",
            second_dimension_name="Neuron",
            first_dimension_labels=["selected neurons"],
            second_dimension_labels=neuron_labels(neurons),
        )
    )


def neuron_text_view(
    model: Any,
    prompt: Any,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    n: int = 5,
    batch_size: int = 8,
) -> OfflineHTML:
    """``text_view`` over the selected neurons' most and least activating examples."""
    chosen = _chosen(model, prompt, examples, neurons, n, batch_size)
    union = sorted({i for ids in chosen for i in ids})
    return text_view(model, prompt, [examples[i] for i in union], neurons, batch_size=batch_size)


def neuron_topk_view(
    model: Any,
    prompt: Any,
    examples: Sequence[Example],
    neurons: pd.DataFrame,
    *,
    n: int = 5,
    batch_size: int = 8,
) -> OfflineHTML:
    """For each neuron, its ``n`` most activating examples, token by token (circuitsvis TopkSamples)."""
    chosen = _chosen(model, prompt, examples, neurons, n, batch_size)
    tokens, acts = [], []
    for j, ids in enumerate(chosen):
        per_example = token_activations(
            model, prompt, [examples[i] for i in ids[:n]], neurons.iloc[[j]], batch_size=batch_size
        )
        pairs = [_display(t, a.numpy()[:, 0]) for t, a in per_example]
        tokens.append([t for t, _ in pairs])
        acts.append([a.tolist() for _, a in pairs])
    return OfflineHTML(
        topk_samples(
            [tokens],
            [acts],
            zeroth_dimension_name="Set",
            first_dimension_name="Neuron",
            zeroth_dimension_labels=["selected neurons"],
            first_dimension_labels=neuron_labels(neurons),
        )
    )
