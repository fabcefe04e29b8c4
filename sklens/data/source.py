"""Where a run's data came from, as ``summary.json`` records it (``data.source``): a generator
with its version and seed, or files with their sha256, so two runs can be told apart by data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from sklens.models.artifacts import sha256_of


def generated(generator: str, seed: int, version: int | None = None) -> dict[str, Any]:
    """A generated data set: the function that made it, its version (if it has one) and seed."""
    out: dict[str, Any] = {"kind": "generated", "generator": generator, "seed": seed}
    return out | ({"version": version} if version is not None else {})


def files(path: str | os.PathLike, pattern: str = "*/task.json") -> dict[str, Any]:
    """Data read from ``path``, a file or a folder of ``pattern`` files: each file's sha256 (by
    its path under the folder) and one sha256 over all of them."""
    path = Path(path)
    paths = [path] if path.is_file() else sorted(path.glob(pattern))
    digests = {
        (p.name if p == path else p.relative_to(path).as_posix()): sha256_of(p) for p in paths
    }
    combined = hashlib.sha256("".join(f"{k}:{v}\n" for k, v in digests.items()).encode())
    return {
        "kind": "files",
        "path": str(path.resolve()),
        "sha256": combined.hexdigest(),
        "files": digests,
    }
