"""circuitsvis views of selected neurons, rendered with no network.

circuitsvis's default HTML imports its JavaScript from a CDN and probes the internet on every
render; an offline notebook or a shared report then shows a blank box. Every view here is an
``OfflineHTML``: it renders from the JavaScript bundle that ships inside the circuitsvis package.

Views render only: like circuitsvis's own functions they take token strings and arrays
(``[pos, neurons]`` per example) and never run a model — ``sklens.explanation.evidence`` computes what they
show. Units are labelled at their site (``L{layer} N{unit}`` for an MLP neuron, with the scan's
slot as ``@soft{k}``) so the real ids survive circuitsvis's renumbering.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from circuitsvis.activations import text_neuron_activations
from circuitsvis.topk_samples import topk_samples
from circuitsvis.utils.render import RenderedHTML

from sklens.atomic import write_text
from sklens.units.neuron_set import NeuronSet
from sklens.units.sites import site_names, unit_slot_label

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
    """Each unit's label at its site (``L3 N5``, ``L3 H5``, ``L8 F1234``), with its slot when
    the table has one (``@soft2``)."""
    if isinstance(neurons, pd.DataFrame) and "slot" in neurons:
        return [
            unit_slot_label(site, L, i, p, word="soft")
            for L, i, p, site in zip(
                neurons.layer, neurons.unit, neurons.slot, site_names(neurons), strict=True
            )
        ]
    return NeuronSet.of(neurons).labels()


SINK_RATIO = 10.0  # position 0 is a sink when its largest |activation| is this many times the rest


def is_sink(acts: np.ndarray) -> bool:
    """Whether position 0 of ``acts`` (``[pos, units]``) is an attention sink, measured: its
    largest |activation| over the units is at least ``SINK_RATIO`` times the largest at any other
    position (~100× with a BOS token in SmolLM2, |a| ≈ 3000). A model with no BOS has its first
    word there, at the scale of the others, and keeps it."""
    acts = np.abs(np.asarray(acts, dtype=float)).reshape(len(acts), -1)
    if len(acts) < 2:
        return False
    return bool(acts[0].max() >= SINK_RATIO * max(acts[1:].max(), 1e-12))


def _display(tokens: list[str], acts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Tokens and activations as views show them.

    Position 0 is left out when it is a measured attention sink (``is_sink``): left in, it would
    set every colour scale. circuitsvis writes token text into ``innerHTML`` unescaped, so
    ``<soft0>`` (or any ``<b>`` or ``&`` in a text) would vanish or be parsed as markup: tokens
    are HTML-escaped here.
    """
    start = 1 if is_sink(acts) else 0
    return [html.escape(t, quote=False) for t in tokens[start:]], acts[start:]


def text_view(
    tokens: Sequence[Sequence[str]],
    activations: Sequence[np.ndarray],
    labels: Sequence[str],
) -> OfflineHTML:
    """Token-level activations, one text per example and a selector over neurons.

    Args:
        tokens: each example's token strings (soft slots as ``<soft0>``...).
        activations: each example's ``[pos, n_neurons]`` activations.
        labels: one label per neuron (``neuron_labels``).
    """
    shown = [_display(list(t), np.asarray(a)) for t, a in zip(tokens, activations, strict=True)]
    return OfflineHTML(
        text_neuron_activations(
            [t for t, _ in shown],
            [a[:, None, :] for _, a in shown],  # (tokens, 1 set, neurons)
            first_dimension_name="Set",
            second_dimension_name="Neuron",
            first_dimension_labels=["selected neurons"],
            second_dimension_labels=list(labels),
        )
    )


def topk_view(
    tokens: Sequence[Sequence[Sequence[str]]],
    activations: Sequence[Sequence[np.ndarray]],
    labels: Sequence[str],
) -> OfflineHTML:
    """Each neuron's chosen examples, token by token (circuitsvis ``topk_samples``).

    Args:
        tokens: per neuron, each example's token strings.
        activations: per neuron, each example's ``[pos]`` activations of that neuron.
        labels: one label per neuron.
    """
    shown = [
        [_display(list(t), np.asarray(a)) for t, a in zip(ts, acts, strict=True)]
        for ts, acts in zip(tokens, activations, strict=True)
    ]
    return OfflineHTML(
        topk_samples(
            [[[t for t, _ in pairs] for pairs in shown]],
            [[[a.tolist() for _, a in pairs] for pairs in shown]],
            zeroth_dimension_name="Set",
            first_dimension_name="Neuron",
            zeroth_dimension_labels=["selected neurons"],
            first_dimension_labels=list(labels),
        )
    )
