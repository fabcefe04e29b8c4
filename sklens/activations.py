"""Activations of selected neurons at the soft-prompt slots, and the examples that drive them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sklens.data.example import Example
from sklens.data.format import encode, iter_batches
from sklens.display import token_texts
from sklens.forward import gather_slots, run_until_stopped, stop_hook
from sklens.soft_prompt import SoftPrompt

NeuronSpec = pd.DataFrame | Sequence[tuple[int, int]]


def as_neuron_list(neurons: NeuronSpec) -> list[tuple[int, int]]:
    """``(layer, neuron)`` pairs from a ``top_k`` DataFrame or a list of pairs."""
    if isinstance(neurons, pd.DataFrame):
        missing = {"layer", "neuron"} - set(neurons.columns)
        if missing:
            raise ValueError(
                f"the neuron table needs columns 'layer' and 'neuron'; missing {missing}"
            )
        return [(int(L), int(i)) for L, i in zip(neurons["layer"], neurons["neuron"], strict=False)]
    return [(int(L), int(i)) for L, i in neurons]


def layer_columns(pairs: list[tuple[int, int]]) -> dict[int, tuple[list[int], Tensor]]:
    """``{layer: (output columns, neuron ids)}`` so one hook per layer reads all its neurons."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for col, (L, i) in enumerate(pairs):
        cols, ids = out.setdefault(L, ([], []))
        cols.append(col)
        ids.append(i)
    return {L: (cols, torch.tensor(ids)) for L, (cols, ids) in sorted(out.items())}


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
    model: Any,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: NeuronSpec,
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
    progress: bool = False,
) -> Float[Tensor, "n_examples n_neurons n_tokens"]:
    """Activations of ``neurons`` at every soft-prompt slot, for every example (float32, CPU)."""
    pairs = as_neuron_list(neurons)
    if not pairs:
        raise ValueError("no neurons were given")
    for L, i in pairs:
        if not (0 <= L < model.cfg.n_layers and 0 <= i < model.cfg.d_mlp):
            raise ValueError(
                f"neuron ({L}, {i}) is outside the model (n_layers={model.cfg.n_layers}, "
                f"d_mlp={model.cfg.d_mlp})"
            )
    examples = list(examples)
    prompt.check_fits(model)
    encoded = encode(model, examples, prompt.n_tokens, chat_template=chat_template)
    out = torch.empty(len(examples), len(pairs), prompt.n_tokens)
    columns = layer_columns(pairs)
    current: dict[str, Any] = {}

    def reader(L: int) -> Any:
        cols, ids = columns[L]

        def read(activation: Tensor, hook: Any) -> None:
            slots = gather_slots(activation, current["batch"])  # (B, k, d_mlp)
            values = slots[..., ids.to(slots.device)].permute(0, 2, 1).float().cpu()  # (B, n, k)
            out[torch.tensor(current["batch"].indices)[:, None], torch.tensor(cols)] = values

        return read

    writer = prompt.writer()
    hooks = [("hook_embed", writer)]
    hooks += [(f"blocks.{L}.mlp.hook_post", reader(L)) for L in columns]
    hooks.append(stop_hook(f"blocks.{max(columns)}.mlp.hook_post"))
    batches = iter_batches(model, encoded, prompt.n_tokens, batch_size, with_completion=False)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in tqdm(batches, desc="activations", disable=not progress, leave=False):
            writer.slot_start = batch.slot_start
            current["batch"] = batch
            run_until_stopped(model, batch)
    return out


def neuron_activations(
    model: Any,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    neurons: NeuronSpec,
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
) -> pd.DataFrame:
    """A long table (example, layer, neuron, position, activation) for the selected neurons."""
    pairs = as_neuron_list(neurons)
    acts = slot_activations(
        model, prompt, examples, pairs, batch_size=batch_size, chat_template=chat_template
    )
    n_ex, n_neurons, k = acts.shape
    grid = torch.cartesian_prod(torch.arange(n_ex), torch.arange(n_neurons), torch.arange(k))
    pair_t = torch.tensor(pairs)
    return pd.DataFrame(
        {
            "example": grid[:, 0].numpy(),
            "layer": pair_t[grid[:, 1], 0].numpy(),
            "neuron": pair_t[grid[:, 1], 1].numpy(),
            "position": grid[:, 2].numpy(),
            "activation": acts.flatten().numpy(),
        }
    )


def top_examples(
    model: Any,
    prompt: SoftPrompt,
    examples: Sequence[Example],
    *,
    layer: int,
    neuron: int,
    n: int = 10,
    largest: bool = True,
    position: int | None = None,
    batch_size: int = 8,
    chat_template: bool | None = None,
) -> pd.DataFrame:
    """The ``n`` examples that activate a neuron most (``largest=False``: least).

    The activation is read at soft-prompt slot ``position`` (pass the ``position`` column of a
    ``top_k`` row to use the slot the scan selected); ``None`` averages over all slots.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    examples = list(examples)
    acts = slot_activations(
        model,
        prompt,
        examples,
        [(layer, neuron)],
        batch_size=batch_size,
        chat_template=chat_template,
    )[:, 0]  # (N, k)
    if position is None:
        values = acts.mean(-1)
    elif 0 <= position < prompt.n_tokens:
        values = acts[:, position]
    else:
        raise ValueError(f"position must be in 0..{prompt.n_tokens - 1} or None, got {position}")
    order = values.argsort(descending=largest)[: min(n, len(examples))]
    rows = [
        {"rank": rank, **example_record(examples[idx], idx, float(values[idx]))}
        for rank, idx in enumerate(order.tolist())
    ]
    return pd.DataFrame(rows)


def token_activations(
    model: Any,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    neurons: NeuronSpec,
    *,
    batch_size: int = 8,
    chat_template: bool | None = None,
) -> list[tuple[list[str], Float[Tensor, "pos n_neurons"]]]:
    """Every token's activation of ``neurons`` for each example (instruction, slots, completion).

    Returns ``(str_tokens, activations [pos, n_neurons])`` per example; soft-prompt slots appear
    as ``<soft0>``, ``<soft1>``, ... so a view shows where the scanned activation lives. A
    character split across tokens is shown whole at its last token (``sklens.display``).
    """
    pairs = as_neuron_list(neurons)
    examples = list(examples)
    n_slots = prompt.n_tokens if prompt is not None else 0
    encoded = encode(model, examples, n_slots, chat_template=chat_template)
    columns = layer_columns(pairs)
    current: dict[str, Any] = {}

    def reader(L: int) -> Any:
        cols, ids = columns[L]

        def read(activation: Tensor, hook: Any) -> None:
            current["acts"][:, :, cols] = activation[..., ids.to(activation.device)].float().cpu()

        return read

    hooks = [(f"blocks.{L}.mlp.hook_post", reader(L)) for L in columns]
    writer = prompt.writer() if prompt is not None else None
    if writer is not None:
        hooks.insert(0, ("hook_embed", writer))
    out: list[tuple[list[str], Tensor]] = [None] * len(examples)  # type: ignore[list-item]
    decode = model.tokenizer.decode
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in iter_batches(model, encoded, n_slots, batch_size):
            if writer is not None:
                writer.slot_start = batch.slot_start
            current["acts"] = torch.zeros(*batch.tokens.shape, len(pairs))
            run_until_stopped(model, batch)
            for row, idx in enumerate(batch.indices):
                length = int(batch.attention_mask[row].sum())
                start = int(batch.slot_start[row])
                tokens = token_texts(decode, batch.tokens[row, :length].tolist())
                tokens[start : start + n_slots] = [f"<soft{k}>" for k in range(n_slots)]
                out[idx] = (tokens, current["acts"][row, :length].clone())
    return out
