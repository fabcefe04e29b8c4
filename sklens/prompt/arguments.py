"""Checks of the Python API's arguments, made before any forward pass.

A wrong type raises a ``TypeError`` that names the argument as it is spelled in Python and says
what to pass (``prompt must be a sklens.SoftPrompt or None, got str``), instead of an
``AttributeError`` from deep inside a pass. The held-out guard of ``explain`` and
``confirm_neurons`` lives here too: a ``Scan.top_k`` table carries the identities of the
examples that selected its units (``attrs["selection_ids"]``, ``example_ids``), and examples
among them are refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from sklens.data.example import Example, data_hash
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt
from sklens.units.neuron_set import NeuronLike

HELD_OUT_FIX = (
    "Pass held-out examples (a study's confirmation split, or sklens.data.train_val_split of the "
    "data before the scan)"
)


def model(value: Any, field: str = "model") -> None:
    """A hookable model (``sklens.models.protocol.Model``: what ``sklens.load_model`` returns)."""
    if not isinstance(value, Model):
        raise TypeError(
            f"{field} must be a model from sklens.load_model (a HookedTransformer or "
            f"TransformerBridge), got {type(value).__name__}"
        )


def prompt(value: Any, *, optional: bool = True, field: str = "prompt") -> None:
    """A ``SoftPrompt`` (or ``None`` where ``optional``). A list of examples in its place says
    that the arguments were passed out of order."""
    if (optional and value is None) or isinstance(value, SoftPrompt):
        return
    wanted = "a sklens.SoftPrompt or None" if optional else "a sklens.SoftPrompt"
    hint = ""
    if isinstance(value, Sequence) and value and isinstance(value[0], Example):
        hint = ": these look like the examples; the order is (model, prompt, examples, ...)"
    raise TypeError(f"{field} must be {wanted}, got {type(value).__name__}{hint}")


def examples(value: Any, field: str = "examples") -> list[Example]:
    """The examples as a list; one ``Example``, a string or a non-iterable is a TypeError (each
    item is checked where the examples are encoded: ``sklens.data.format``)."""
    if isinstance(value, Example):
        raise TypeError(
            f"{field} must be a list of sklens.Example, got one Example: pass [example]"
        )
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{field} must be a list of sklens.Example, got {type(value).__name__}")
    return list(value)


def example_id(example: Example) -> str:
    """A short sha256 of one example's text: how a table remembers the examples that made it."""
    text = json.dumps([example.instruction, example.completion], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def example_ids(examples: Sequence[Example]) -> tuple[str, ...]:
    """The distinct ``example_id`` of ``examples``, sorted."""
    return tuple(sorted({example_id(e) for e in examples}))


def held_out(examples: Sequence[Example], neurons: NeuronLike, caller: str) -> None:
    """Refuse ``examples`` of which any selected the units of ``neurons`` (a ``Scan.top_k``
    table's ``attrs["selection_ids"]``, compared by instruction and completion); warn when the
    table does not say which examples selected them (read back from a file, built by hand)."""
    attrs = getattr(neurons, "attrs", None) or {}
    ids = attrs.get("selection_ids")
    if ids is not None:
        selected = set(ids)
        overlap = [i for i, e in enumerate(examples) if example_id(e) in selected]
    elif attrs.get("selection_hash") == data_hash(examples):  # a scan that kept no ids
        overlap = list(range(len(examples)))
    else:
        warnings.warn(
            f"{caller} cannot check that these examples are held out: the unit table does not "
            "record the examples that selected its units (a table read back from a file, built "
            "by hand, or from scan_activations); make sure none of them was among those",
            stacklevel=3,
        )
        return
    if overlap:
        raise ValueError(
            f"{len(overlap)} of the {len(examples)} examples given (example {overlap[0]} first) "
            "are the examples that selected the units: their effects would be inflated by the "
            f"selection. {HELD_OUT_FIX}"
        )
