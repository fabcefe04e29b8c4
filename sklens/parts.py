"""Finished pieces of a long computation, saved as each finishes, so a killed run goes on from
the last one instead of from the stage's beginning.

A causal check evaluates hundreds of random unit sets, one pass over its examples each; a seed
study trains a prompt per seed. On a CPU either can outlast a working session, and a stage that
restarts from nothing never finishes. ``Parts`` is a folder of one table per finished piece,
named by a hash of everything that determines it (the caller's ``context``: model, prompt,
examples, settings; and the piece's own identity: e.g. the set's units), so a piece is reused
only where it would be computed the same, and a piece of other settings is never mixed in.
Each table is written atomically (``sklens.atomic``): a kill leaves it whole or absent.

The tables are pandas CSVs; float64 values round-trip exactly (``tests/unit/test_parts.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sklens.atomic import atomic_path


def digest(value: Any) -> str:
    """A short sha256 of ``value``: JSON-able data, with tensors hashed by their bytes."""

    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            return {"tensor": hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest(),
                    "dtype": str(t.dtype), "shape": list(t.shape)}  # fmt: skip
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    text = json.dumps(plain(value), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Parts:
    """A folder of finished pieces under one ``context``; ``None`` in place of a folder (``of``)
    keeps nothing, so callers need no second code path."""

    def __init__(self, folder: str | os.PathLike, context: Mapping[str, Any]):
        self.folder = Path(folder)
        self.context = digest(context)

    @classmethod
    def of(cls, folder: str | os.PathLike | None, context: Mapping[str, Any]) -> Parts | None:
        return None if folder is None else cls(folder, context)

    def path(self, name: str, identity: Any) -> Path:
        """The file of piece ``name`` (readable, e.g. ``mean-random_3``) with ``identity``."""
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
        return self.folder / f"{readable}-{digest([self.context, identity])}.csv"

    def load(self, name: str, identity: Any) -> pd.DataFrame | None:
        """The saved table of this piece, or None if it was not finished."""
        path = self.path(name, identity)
        return pd.read_csv(path) if path.exists() else None

    def save(self, name: str, identity: Any, table: pd.DataFrame) -> None:
        """Save a finished piece (atomically: a kill leaves it whole or absent)."""
        with atomic_path(self.path(name, identity)) as tmp:
            table.to_csv(tmp, index=False)
