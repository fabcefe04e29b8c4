"""Activations of selected units (of any site, ``sklens.sites``) at the soft-prompt slots, and
the examples that drive them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from sklens.data.example import Example
from sklens.data.format import Batch, encode
from sklens.display import token_texts
from sklens.models.protocol import Model
from sklens.prompt.forward import batched_pass, gather_slots, slot_count, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.units.neuron_set import NeuronLike, NeuronSet
from sklens.units.sites import SiteLike


class NeuronReader:
    """Reads ``neurons``' activations at their site's hook — at each row's slots
    (``values``: ``[batch, slot, n_neurons]``) or at every position (``[batch, pos,
    n_neurons]``) — for the current batch of a ``batched_pass``."""

    def __init__(self, neurons: NeuronSet, *, slots_only: bool):
        self.columns, self.site = neurons.columns(), neurons.site
        self.n, self.slots_only = len(neurons), slots_only
        self.last_hook = self.site.hook(max(self.columns))
        self.batch: Batch | None = None
        self.values = torch.empty(0)

    def start(self, batch: Batch) -> None:
        self.batch = batch
        width = batch.read_positions.shape[1] if self.slots_only else batch.tokens.shape[1]
        self.values = torch.zeros(len(batch.indices), width, self.n)

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.site.hook(L), self._reader(L)) for L in self.columns]

    def _reader(self, layer: int) -> Any:
        cols, ids = self.columns[layer]

        def read(activation: Float[Tensor, "batch pos *site"], hook: Any) -> None:
            if self.slots_only:
                activation = gather_slots(activation, self.batch)  # (B, k, *site)
            units = self.site.units(activation, layer)
            self.values[:, :, cols] = units[..., ids.to(units.device)].float().cpu()

        return read


def example_record(example: Example, index: int, activation: float) -> dict[str, Any]:
    """One table row for an example and its activation, with its scalar meta fields.

    Meta fields are named ``meta.<field>``, so a task's own field (``position``, ``rank``,
    ``activation``, ...) can never overwrite one of sklens's columns.
    """
    scalars = {f"meta.{k}": v for k, v in example.meta.items() if not isinstance(v, (list, dict))}
    return {
        "example": index,
        "activation": activation,
        "instruction": example.instruction,
        "completion": example.completion,
        **scalars,
    }


def slot_activations(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: NeuronLike,
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
    progress: bool = False,
) -> Float[Tensor, "n_examples n_neurons slot"]:
    """Activations of ``neurons`` at every soft-prompt slot, for every example (float32, CPU).

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt written into the slots.
        examples: the examples to run.
        neurons: any ``NeuronSet`` form (a ``top_k`` table, pairs, a mask, a dict); the output's
            neuron axis follows its order.
        batch_size: examples per forward pass (each stops after the last layer needed).
        chat_template: use the tokenizer's chat template (default: when it has one).
        progress: show a tqdm bar.

    Returns:
        ``[n_examples, n_neurons, slot]``.
    """
    neurons = NeuronSet.of(neurons, model)
    if not neurons:
        raise ValueError("no neurons were given")
    examples = list(examples)
    prompt.check_fits(model)
    encoded = encode(model, examples, prompt.n_slots, chat_template=chat_template)
    reader = NeuronReader(neurons, slots_only=True)
    out = torch.empty(len(examples), len(neurons), prompt.n_slots)
    for batch, _ in batched_pass(
        model,
        encoded,
        prompt.n_slots,
        [prompt.writer(), reader],
        batch_size=batch_size,
        stop_after=reader.last_hook,
        progress=progress,
        desc="activations",
    ):
        out[torch.tensor(batch.indices)] = reader.values.permute(0, 2, 1)  # (B, n, k)
    return out


def require_slots(neurons: NeuronLike, caller: str) -> pd.DataFrame:
    """``neurons`` if it names each unit's slot (a ``top_k`` table), else a ValueError saying
    what ``caller`` needs."""
    if not isinstance(neurons, pd.DataFrame) or not {"layer", "unit", "slot"} <= set(neurons):
        raise ValueError(
            f"{caller} needs each unit's slot: pass a Scan.top_k table, or a DataFrame with "
            "columns layer, unit and slot"
        )
    return neurons


def at_selected_slot(
    acts: Float[Tensor, "n_examples n_neurons slot"], neurons: pd.DataFrame
) -> Float[Tensor, "n_examples n_neurons"]:
    """Each neuron's activation at the slot its ``top_k`` row selected (its ``slot`` column)."""
    slots = torch.tensor(neurons["slot"].to_numpy(), dtype=torch.long)
    return acts[:, torch.arange(len(neurons)), slots]


def extremal_indices(
    acts: Float[Tensor, "n_examples n_neurons slot"], neurons: pd.DataFrame, n: int
) -> list[tuple[list[int], list[int]]]:
    """For each neuron row, its ``n`` most and ``n`` least activating examples at its selected
    slot (the least leave out any already among the most, when there are fewer than ``2n``
    examples) — from ``slot_activations`` of those neurons, so a caller that has them pays no
    extra pass. The examples table, the report and the views all take them from here."""
    picked = at_selected_slot(acts, neurons)
    out = []
    for j in range(len(neurons)):
        most = picked[:, j].argsort(descending=True)[:n].tolist()
        least = [i for i in picked[:, j].argsort()[:n].tolist() if i not in most]
        out.append((most, least))
    return out


def neuron_activations(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: NeuronLike,
    **options: Any,
) -> pd.DataFrame:
    """``slot_activations`` as a long table (site, example, layer, unit, slot, activation).

    ``options`` are ``slot_activations``'s (``batch_size``, ``chat_template``, ``progress``),
    passed on so the two read with the same settings and defaults.

    Args:
        model: the model the units belong to.
        prompt: the trained soft prompt.
        examples: the examples to read.
        neurons: the units: a ``top_k`` table, ``(layer, unit)`` pairs or a mask.
        **options: ``slot_activations``'s keyword arguments.

    Returns:
        One row per (example, unit, slot).
    """
    neurons = NeuronSet.of(neurons, model)
    acts = slot_activations(model, prompt, examples, neurons, **options)
    n_ex, n_neurons, k = acts.shape
    grid = torch.cartesian_prod(torch.arange(n_ex), torch.arange(n_neurons), torch.arange(k))
    pair_t = torch.tensor(neurons.pairs)
    return pd.DataFrame(
        {
            "example": grid[:, 0].numpy(),
            "layer": pair_t[grid[:, 1], 0].numpy(),
            "unit": pair_t[grid[:, 1], 1].numpy(),
            "slot": grid[:, 2].numpy(),
            "activation": acts.flatten().numpy(),
            "site": neurons.site.name,
        }
    )


def top_examples(
    model: Model,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    *,
    layer: int,
    unit: int,
    n: int = 10,
    largest: bool = True,
    slot: int | None = None,
    batch_size: int = 8,
    chat_template: bool | None = None,
    site: SiteLike | None = None,
) -> pd.DataFrame:
    """The ``n`` examples that activate a unit most (``largest=False``: least).

    The activation is read at soft-prompt slot ``slot`` (pass the ``slot`` column of a
    ``top_k`` row to use the slot the scan selected); ``None`` averages over all slots.

    Args:
        model: a HookedTransformer or TransformerBridge.
        prompt: the soft prompt.
        examples: the examples to rank.
        layer: the unit's layer.
        unit: the unit's index at its site (an MLP neuron's in ``blocks.{layer}.mlp.hook_post``).
        n: how many examples.
        largest: the most activating (True) or the least (False).
        slot: the slot to read, or None for the mean over slots.
        batch_size: examples per forward pass.
        chat_template: use the tokenizer's chat template (default: when it has one).
        site: the unit's site (``sklens.sites``; default MLP neurons), e.g. ``scan.site``.

    Returns:
        One row per example, ranked: ``rank``, ``example``, ``activation``, ``instruction``,
        ``completion`` and the scalar meta fields as ``meta.<field>``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    examples = list(examples)
    acts = slot_activations(
        model,
        prompt,
        examples,
        NeuronSet.of([(layer, unit)], site=site),
        batch_size=batch_size,
        chat_template=chat_template,
    )[:, 0]  # (N, k)
    if slot is None:
        values = acts.mean(-1)
    elif 0 <= slot < prompt.n_slots:
        values = acts[:, slot]
    else:
        raise ValueError(f"slot must be in 0..{prompt.n_slots - 1} or None, got {slot}")
    order = values.argsort(descending=largest)[: min(n, len(examples))]
    rows = [
        {"rank": rank, **example_record(examples[idx], idx, float(values[idx]))}
        for rank, idx in enumerate(order.tolist())
    ]
    return pd.DataFrame(rows)


def token_activations(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: NeuronLike,
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
) -> list[tuple[list[str], Float[Tensor, "pos n_neurons"]]]:
    """Every token's activation of ``neurons`` for each example (instruction, slots, completion).

    Returns ``(str_tokens, activations [pos, n_neurons])`` per example; soft-prompt slots appear
    as ``<soft0>``, ``<soft1>``, ... so a view shows where the scanned activation lives. A
    character split across tokens is shown whole at its last token (``sklens.display``).
    """
    neurons = NeuronSet.of(neurons, model)
    examples = list(examples)
    n_slots = slot_count(prompt)
    encoded = encode(model, examples, n_slots, chat_template=chat_template)
    reader = NeuronReader(neurons, slots_only=False)
    parts = with_prompt(prompt, reader)
    out: list[tuple[list[str], Tensor]] = [None] * len(examples)  # type: ignore[list-item]
    decode = model.tokenizer.decode
    for batch, _ in batched_pass(
        model,
        encoded,
        n_slots,
        parts,
        batch_size=batch_size,
        with_completion=True,
        stop_after=reader.last_hook,
    ):
        for row, idx in enumerate(batch.indices):
            length = int(batch.attention_mask[row].sum())
            start = int(batch.slot_start[row])
            tokens = token_texts(decode, batch.tokens[row, :length].tolist())
            tokens[start : start + n_slots] = [f"<soft{k}>" for k in range(n_slots)]
            out[idx] = (tokens, reader.values[row, :length].clone())
    return out
