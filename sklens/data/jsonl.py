"""JSON-lines files: one object per line, validated with errors that name the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sklens.data.example import Example


def read_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line; bad JSON names its line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def require_strings(path: Path, lineno: int, obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise naming the line when a required field is missing or not a non-empty string."""
    for key in keys:
        if key not in obj:
            raise ValueError(f"{path}:{lineno}: missing field {key!r} (fields: {sorted(obj)})")
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ValueError(
                f"{path}:{lineno}: field {key!r} must be a non-empty string, got {obj[key]!r}"
            )


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """A user task: ``{"instruction": ..., "completion": ..., <meta fields>...}`` per line."""
    examples = []
    for lineno, obj in read_objects(path):
        require_strings(Path(path), lineno, obj, ("instruction", "completion"))
        meta = {k: v for k, v in obj.items() if k not in ("instruction", "completion")}
        examples.append(Example(obj["instruction"], obj["completion"], meta))
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples
