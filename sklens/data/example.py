"""The unit of data: what the model reads, what it should write, and labels about it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sklens.parts import digest


@dataclass(frozen=True)
class Example:
    """One instruction–completion pair.

    Attributes:
        instruction: everything example-specific the model reads (task text *and* input). The
            soft-prompt slots follow it, and under causal attention they see only what precedes
            them, so nothing that differs between examples may live elsewhere.
        completion: the target text; the training loss and loss metrics use its tokens only.
        meta: labels about the example (skill, heuristic, operation, ...) for metrics and plots.
    """

    instruction: str
    completion: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.instruction, str) or not isinstance(self.completion, str):
            raise TypeError(
                "Example.instruction and Example.completion must be str, got "
                f"{type(self.instruction).__name__} and {type(self.completion).__name__}"
            )
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"Example.meta must be a mapping, got {type(self.meta).__name__}")


def data_hash(examples: Sequence[Example]) -> str:
    """A short sha256 of the examples' text, to record which data made a result."""
    sha = hashlib.sha256()
    for e in examples:
        sha.update(json.dumps([e.instruction, e.completion], ensure_ascii=False).encode())
    return sha.hexdigest()[:16]


def content_hash(examples: Sequence[Example]) -> str:
    """A short sha256 of the examples' text and meta: where choices and answers change a
    result (a causal check's scores), ``data_hash``, the text only, would not tell them apart."""
    return digest([[e.instruction, e.completion, e.meta] for e in examples])
