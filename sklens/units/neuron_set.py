"""One type for "which neurons": ``NeuronSet``, accepted by every function that takes neurons.

A user names units as a ``Scan.top_k`` table (columns ``layer`` and ``unit``), a list of
``(layer, unit)`` pairs, a boolean mask ``[n_layers, d_mlp]``, a ``{layer: ids}`` dict, or a
``NeuronSet``; ``NeuronSet.of`` parses each (checked against the model when one is given) and
keeps the order given, so the columns of ``slot_activations`` follow the rows of a ``top_k``
table. Hooks read one layer at a time, so the set also answers per layer: ``columns()`` (output
column and unit id of each entry) and ``by_layer()`` (the distinct ids, as an intervention edits
them). Normalising once is how TransformerLens treats its slices (``utilities/slice.py``:
``SliceInput`` → ``Slice``). A hand-built table may name its unit column ``neuron`` (the MLP
site's unit), as tables did before every site's unit was a ``unit``.

A set also holds its *site* (``sklens.sites``: MLP neurons by default, or heads, residual
dimensions, SAE latents, …), so every reader and edit uses the hook and unit map the ids belong
to. A table carries its site's name in a ``site`` column (``Scan.top_k``); a table of one site
passed with another raises instead of editing unit 12 of the wrong site.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sklens.models.protocol import Model
from sklens.units.sites import MLP, Site, SiteLike, rebuild, resolve_site, site_of

NeuronLike = Union[
    "NeuronSet", pd.DataFrame, Sequence[tuple[int, int]], Tensor, Mapping[int, Sequence[int]]
]

FORMS = (
    "a Scan.top_k table (a DataFrame with columns layer and unit), a list of (layer, unit) "
    "pairs, a bool mask [n_layers, units], a {layer: [ids]} dict, or a NeuronSet"
)


@dataclass(frozen=True)
class NeuronSet:
    """``(layer, unit)`` pairs of one site in the order given (a pair may repeat: one output
    column each)."""

    pairs: tuple[tuple[int, int], ...]
    site: Site = MLP

    @classmethod
    def of(
        cls, neurons: NeuronLike, model: Model | None = None, site: SiteLike | None = None
    ) -> NeuronSet:
        """Parse any ``NeuronLike``; with ``model``, bind the site and check every pair lies
        inside it. ``site`` is needed for pairs, masks and dicts of a site other than MLP
        neurons, and for tables of a site that holds tensors (SAE latents, directions).

        A table names each unit by its ``layer`` and ``unit`` columns, as every table sklens
        writes does. A table with a ``neuron`` column instead (a hand-built table of MLP
        neurons) is read the same way, its ``neuron`` column as ``unit``; a table with both is
        refused, since either could be meant."""
        if isinstance(neurons, NeuronSet):
            out = neurons if site is None else cls(neurons.pairs, _same_site(neurons.site, site))
        elif isinstance(neurons, pd.DataFrame):
            pairs = zip(_whole_column(neurons, "layer"), _unit_column(neurons), strict=True)
            out = cls(tuple(pairs), _table_site(neurons, site))
        elif isinstance(neurons, Tensor):
            mask_site = site_of(site)
            if model is not None and not mask_site.size:
                mask_site = resolve_site(mask_site, model)
            expected = None if model is None else (model.cfg.n_layers, mask_site.size)
            if (
                neurons.dtype != torch.bool
                or neurons.ndim != 2
                or (expected is not None and tuple(neurons.shape) != expected)
            ):
                shape = (
                    "[n_layers, units]" if expected is None else f"[{expected[0]}, {expected[1]}]"
                )
                raise ValueError(
                    f"a neuron mask must be bool {shape}, got {neurons.dtype} {tuple(neurons.shape)}"
                )
            out = cls(tuple((int(L), int(i)) for L, i in neurons.nonzero().tolist()), mask_site)
        elif isinstance(neurons, Mapping):
            pairs = tuple(
                (_whole(L, f"neurons: the key {L!r}", "a layer"), i)
                for L, ids in neurons.items()
                for i in _ids(ids, f"neurons[{L!r}]")
            )
            out = cls(pairs, site_of(site))
        elif isinstance(neurons, Iterable) and not isinstance(neurons, (str, bytes)):
            out = cls(tuple(_pair(p, j) for j, p in enumerate(neurons)), site_of(site))
        else:
            raise TypeError(f"neurons must be {FORMS}; got {type(neurons).__name__}")
        if model is not None:
            out = cls(out.pairs, out.site if out.site.size else resolve_site(out.site, model))
            out.check(model.cfg.n_layers, model)
        return out

    def check(self, n_layers: int, model: Model | None = None) -> None:
        """Raise on a pair outside a model with ``n_layers`` layers (and the bound site's size,
        at a layer where the site's hook exists in ``model``)."""
        size = self.site.size
        for L, i in self.pairs:
            if not (0 <= L < n_layers and 0 <= i < size):
                raise ValueError(
                    f"unit ({L}, {i}) is outside the model's site {self.site.name!r} "
                    f"(n_layers={n_layers}, units per layer={size})"
                )
        self.site.check_layers(self.layers, model)

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
        """The site's label per entry (``L3 N5``, ``L3 H5``, ``L8 F1234``: views and tables)."""
        return [self.site.label(L, i) for L, i in self.pairs]


def nonempty(units: NeuronSet) -> NeuronSet:
    """``units``, refused when it names no unit: where an empty set is no question (a causal
    check), not where it is a no-op (``ablated(model, [])`` edits nothing)."""
    if not units.pairs:
        raise ValueError(
            "neurons names no unit (an empty table, list or dict, or an all-False mask): pass "
            "at least one (layer, neuron)"
        )
    return units


def _integer_dtype(dtype: Any) -> bool:
    """A torch or NumPy integer dtype (not bool)."""
    if isinstance(dtype, torch.dtype):
        return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
    return bool(np.issubdtype(dtype, np.integer))


def _whole(value: Any, where: str, what: str) -> int:
    """``value`` as an int: a Python or NumPy integer, or a 0-d integer tensor or array; a float
    (``1.5``, also ``1.0``), a string or a bool is a TypeError (``int(1.5)`` would be 1)."""
    if isinstance(value, (Tensor, np.ndarray)):
        if value.ndim == 0 and _integer_dtype(value.dtype):
            return int(value)
    elif isinstance(value, Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise TypeError(f"{where} must be {what} (a whole number), got {value!r}")


def _pair(item: Any, j: int) -> tuple[int, int]:
    """Item ``j`` of a list of ``(layer, unit)`` pairs."""
    if isinstance(item, (str, bytes)) or not isinstance(item, Iterable):
        raise TypeError(
            f"neurons[{j}] is {item!r}, not a (layer, unit) pair: neurons must be {FORMS}"
        )
    parts = list(item)
    if len(parts) != 2:
        raise TypeError(
            f"neurons[{j}] has {len(parts)} values, not a (layer, unit) pair: neurons must be "
            f"{FORMS}"
        )
    return (
        _whole(parts[0], f"neurons[{j}]: the layer", "a layer index"),
        _whole(parts[1], f"neurons[{j}]: the unit", "a unit index"),
    )


def _ids(ids: Any, where: str) -> list[int]:
    """The unit ids of one layer of a ``{layer: ids}`` dict."""
    if isinstance(ids, (Tensor, np.ndarray)) and ids.ndim == 1:
        if len(ids) and not _integer_dtype(ids.dtype):
            raise TypeError(f"{where} must hold unit ids (whole numbers), got dtype {ids.dtype}")
        return [int(i) for i in ids.tolist()]
    if isinstance(ids, (str, bytes, Tensor, np.ndarray)) or not isinstance(ids, Iterable):
        raise TypeError(f"{where} must be a list of unit ids, got {ids!r}")
    return [_whole(i, where, "a list of unit ids") for i in ids]


def _unit_column(table: pd.DataFrame) -> list[int]:
    """A table's unit ids: its ``unit`` column, or a ``neuron`` column in its place (a
    hand-built table of MLP neurons); a table with both, or neither, is refused."""
    named = [c for c in ("unit", "neuron") if c in table.columns]
    if len(named) == 2:
        raise ValueError(
            "the table has both a 'unit' and a 'neuron' column, so which holds the unit ids is "
            "unclear: keep 'unit' (the column sklens writes) and drop or rename 'neuron'"
        )
    if not named:
        raise ValueError(
            "the unit table needs a 'unit' column (the unit ids, as Scan.top_k writes them; "
            f"'neuron' is read in its place); it has {sorted(map(str, table.columns))}"
        )
    return _whole_column(table, named[0])


def _whole_column(table: pd.DataFrame, column: str) -> list[int]:
    """A table's ``layer`` or unit column as ints; fractions, text and bools are refused
    (a float column of whole numbers, as a CSV with gaps reads back, is accepted)."""
    if column not in table.columns:
        raise ValueError(
            f"the unit table needs a {column!r} column; it has {sorted(map(str, table.columns))}"
        )
    values = table[column]
    if pd.api.types.is_bool_dtype(values):
        ok = pd.Series(False, index=values.index)
    elif pd.api.types.is_integer_dtype(values):
        ok = pd.Series(True, index=values.index)
    elif pd.api.types.is_float_dtype(values):
        ok = np.isfinite(values) & (values == values.round())
    else:  # object: Python ints pass
        ok = values.map(lambda v: isinstance(v, Integral) and not isinstance(v, (bool, np.bool_)))
    bad = values[~ok.astype(bool)]
    if not bad.empty:
        raise TypeError(
            f"the unit table's column {column!r} must hold whole numbers, got "
            f"{bad.tolist()[0]!r} (row {bad.index[0]!r})"
        )
    return [int(v) for v in values]


def _same_site(held: Site, given: SiteLike) -> Site:
    wanted = site_of(given)
    if wanted.name != held.name:
        raise ValueError(
            f"these units belong to site {held.name!r}, but site={wanted.name!r} was passed: "
            "pass the site the units were scanned at (scan.site), or drop site="
        )
    return held if held.size else wanted


def _table_site(table: pd.DataFrame, given: SiteLike | None) -> Site:
    """The site a table's ``site`` column names, checked against ``given``; MLP without one."""
    names = sorted(set(table["site"])) if "site" in table.columns else []
    if len(names) > 1:
        raise ValueError(f"the table mixes sites {names}: pass the rows of one site at a time")
    if not names:
        return site_of(given)
    if given is not None:
        wanted = site_of(given)
        if wanted.name != names[0]:
            raise ValueError(
                f"the table's units belong to site {names[0]!r}, but site={wanted.name!r} was "
                "passed: pass the site the table was scanned at (scan.site)"
            )
        return wanted
    rebuilt = rebuild(names[0])
    if rebuilt is None:
        raise ValueError(
            f"the table's units are at site {names[0]!r}, which holds tensors (an SAE or "
            "directions): pass site= the same object the scan used (scan.site)"
        )
    return rebuilt
