"""JSON-lines files: one object per line, validated with errors that name the line."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sklens.data.example import Example


def read_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line; anything unreadable names its line.

    Lines are decoded one by one, so a byte that is not UTF-8 is reported at its line. JSON that
    Python reads but other tools do not (``NaN``, ``Infinity``, a lone surrogate escape such as
    ``"\\ud800"``, which no tokenizer can encode) is refused at its line too.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} at column "
                    f"{err.start + 1}); save the file as UTF-8"
                ) from err
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
            for key, value in obj.items():
                _check_value(path, lineno, key, value)
            yield lineno, obj


def _check_value(path: Path, lineno: int, key: str, value: Any) -> None:
    """Refuse NaN/Infinity and lone surrogates anywhere in one field's value (or its key)."""
    for text in (key, value) if isinstance(value, str) else (key,):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{path}:{lineno}: field {key!r} holds a lone surrogate "
                f"{text[err.start]!r} at character {err.start + 1}, which is not text; fix the "
                "escape (a \\ud800-\\udfff escape must be half of a pair)"
            ) from err
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(
            f"{path}:{lineno}: field {key!r} is {json.dumps(value)}, which is not a JSON number; "
            "give a number or drop the field or line"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(path, lineno, f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_value(path, lineno, f"{key}[{i}]", v)


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
