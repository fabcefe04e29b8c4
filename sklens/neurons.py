"""One type for "which neurons": ``NeuronSet``, accepted by every function that takes neurons.

A user names neurons as a ``Scan.top_k`` table, a list of ``(layer, neuron)`` pairs, a boolean
mask ``[n_layers, d_mlp]``, a ``{layer: ids}`` dict, or a ``NeuronSet``; ``NeuronSet.of`` parses
each (checked against the model when one is given) and keeps the order given, so the columns of
``slot_activations`` follow the rows of a ``top_k`` table. Hooks read one layer at a time, so the
set also answers per layer: ``columns()`` (output column and neuron id of each entry) and
``by_layer()`` (the distinct ids, as an intervention edits them). Normalising once is how
TransformerLens treats its slices (``utilities/slice.py``: ``SliceInput`` → ``Slice``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import pandas as pd
import torch
from torch import Tensor

from sklens.models.protocol import Model

NeuronLike = Union[
    "NeuronSet", pd.DataFrame, Sequence[tuple[int, int]], Tensor, Mapping[int, Sequence[int]]
]


@dataclass(frozen=True)
class NeuronSet:
    """``(layer, neuron)`` pairs in the order given (a pair may repeat: one output column each)."""

    pairs: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, neurons: NeuronLike, model: Model | None = None) -> NeuronSet:
        """Parse any ``NeuronLike``; with ``model``, check every pair lies inside it."""
        cfg = getattr(model, "cfg", None)
        if isinstance(neurons, NeuronSet):
            out = neurons
        elif isinstance(neurons, pd.DataFrame):
            missing = {"layer", "neuron"} - set(neurons.columns)
            if missing:
                raise ValueError(
                    f"the neuron table needs columns 'layer' and 'neuron'; missing {sorted(missing)}"
                )
            layers, ids = neurons["layer"].astype(int), neurons["neuron"].astype(int)
            out = cls(tuple(zip(layers, ids, strict=True)))
        elif isinstance(neurons, Tensor):
            if (
                neurons.dtype != torch.bool
                or neurons.ndim != 2
                or (cfg is not None and tuple(neurons.shape) != (cfg.n_layers, cfg.d_mlp))
            ):
                shape = "[n_layers, d_mlp]" if cfg is None else f"[{cfg.n_layers}, {cfg.d_mlp}]"
                raise ValueError(
                    f"a neuron mask must be bool {shape}, got {neurons.dtype} {tuple(neurons.shape)}"
                )
            out = cls(tuple((int(L), int(i)) for L, i in neurons.nonzero().tolist()))
        elif isinstance(neurons, Mapping):
            out = cls(tuple((int(L), int(i)) for L, ids in neurons.items() for i in ids))
        else:
            out = cls(tuple((int(L), int(i)) for L, i in neurons))
        if cfg is not None:
            out.check(cfg.n_layers, cfg.d_mlp)
        return out

    def check(self, n_layers: int, d_mlp: int) -> None:
        """Raise on a pair outside a model with ``n_layers`` layers of ``d_mlp`` neurons."""
        for L, i in self.pairs:
            if not (0 <= L < n_layers and 0 <= i < d_mlp):
                raise ValueError(
                    f"neuron ({L}, {i}) is outside the model (n_layers={n_layers}, d_mlp={d_mlp})"
                )

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)

    @property
    def layers(self) -> list[int]:
        """The distinct layers, ascending."""
        return sorted({L for L, _ in self.pairs})

    def columns(self) -> dict[int, tuple[list[int], Tensor]]:
        """``{layer: (output columns, neuron ids)}``: one hook per layer reads all its entries."""
        out: dict[int, tuple[list[int], list[int]]] = {}
        for col, (L, i) in enumerate(self.pairs):
            cols, ids = out.setdefault(L, ([], []))
            cols.append(col)
            ids.append(i)
        return {L: (cols, torch.tensor(ids)) for L, (cols, ids) in sorted(out.items())}

    def by_layer(self) -> dict[int, Tensor]:
        """``{layer: distinct neuron ids, ascending}``, layers ascending."""
        out: dict[int, set[int]] = {}
        for L, i in self.pairs:
            out.setdefault(L, set()).add(i)
        return {L: torch.tensor(sorted(ids)) for L, ids in sorted(out.items())}

    def labels(self) -> list[str]:
        """``L{layer} N{neuron}`` per entry (as views and tables name them)."""
        return [f"L{L} N{i}" for L, i in self.pairs]
