"""Checks of user settings that run before any heavy work, with errors that say what to do.

Every error names the setting the way the user wrote it: a Python argument (``top_k``) from the
API, a flag (``--top-k``) inside ``with spelled_as_flags():``, which the command line uses. The
checks of a ``StudyConfig`` import nothing heavy, so ``sklens run`` refuses a bad flag in a
fraction of a second; the checks against the task's examples run once they are loaded, before the
model is.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from sklens.vocabulary import (
    DATA_TASKS,
    SITE_NAMES,
    TASKS,
)

_FLAGS: ContextVar[bool] = ContextVar("sklens_flags", default=False)
_FILES: ContextVar[bool] = ContextVar("sklens_files", default=True)
_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")
MIN_SCAN = 3  # examples a correlation needs (sklens.scan refuses fewer)


@contextmanager
def spelled_as_flags() -> Iterator[None]:
    """Inside, errors name settings as command-line flags (``--top-k 10``)."""
    token = _FLAGS.set(True)
    try:
        yield
    finally:
        _FLAGS.reset(token)


@contextmanager
def files_unchecked() -> Iterator[None]:
    """Inside, settings that name files are not checked for the files: a saved run's settings
    are read back (``sklens report``) whether or not its task file is still there."""
    token = _FILES.set(False)
    try:
        yield
    finally:
        _FILES.reset(token)


def example(field: str, flag: str, python: Any) -> str:
    """A fix in the user's syntax where the two spell the value differently: ``--seeds 0,1,2``
    on the command line, ``seeds=(0, 1, 2)`` in Python."""
    return f"{name(field)} {flag}" if _FLAGS.get() else f"{field}={python!r}"


def name(field: str) -> str:
    """``top_k`` as the user wrote it: ``top_k`` in Python, ``--top-k`` on the command line."""
    return "--" + field.replace("_", "-") if _FLAGS.get() else field


def assign(field: str, value: Any) -> str:
    """The fix in the user's syntax: ``top_k=10`` in Python, ``--top-k 10`` on the command line."""
    return f"{name(field)} {value}" if _FLAGS.get() else f"{field}={value!r}"


def integer(field: str, value: Any, *, minimum: int | None = None, meaning: str = "") -> int:
    """``value`` as an int, refusing floats, bools and strings (``n_slots=2.5``)."""
    what = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name(field)} must be a whole number{what}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name(field)} must be at least {minimum}{what}, got {value}")
    return int(value)


MAX_MI_BINS = 16  # the MI null's cost grows with bins², and more bins need far more examples


def mi_bins(value: Any, n_examples: int) -> int:
    """The mutual information's bins per unit: 0 (none) or 2..16, at most half the examples."""
    integer("mi_bins", value, minimum=0, meaning="bins per unit of the mutual information")
    if value == 1 or value > MAX_MI_BINS:
        raise ValueError(
            f"{name('mi_bins')} must be 0 (no mutual information) or 2..{MAX_MI_BINS}, got "
            f"{value}; four bins are a good default: {assign('mi_bins', 4)}"
        )
    if value and n_examples < 2 * value:
        raise ValueError(
            f"{name('mi_bins')} {value} needs at least {2 * value} examples (two per bin), got "
            f"{n_examples}; use fewer bins, e.g. {assign('mi_bins', max(2, n_examples // 2))}"
        )
    return int(value)


def positive(field: str, value: Any) -> float:
    """A finite number above 0 (``lr``): refuses NaN and infinity, which train nothing."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name(field)} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name(field)} must be a finite number above 0, got {value}")
    return float(value)


def choice(field: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options``; the error lists them."""
    if value not in options:
        raise ValueError(f"{name(field)} must be one of {', '.join(options)}; got {value!r}")
    return value


def items(text: str) -> list[str]:
    """The parts of a comma-separated setting (``"0, 1,2"`` -> ``["0", "1", "2"]``)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def choices(field: str, text: str, options: Sequence[str]) -> list[str]:
    """A comma-separated list of ``options`` (``--measures spearman,auroc``)."""
    chosen = items(text)
    unknown = [c for c in chosen if c not in options]
    if unknown:
        raise ValueError(
            f"{name(field)} has unknown {', '.join(map(repr, unknown))}; use a comma-separated "
            f"list of {', '.join(options)}"
        )
    return chosen


def device(value: Any) -> None:
    """A device torch has here; ``cuda`` without a GPU is refused with the CPU as the fix.

    ``mps`` is refused: MPS has no float64, in which the scan accumulates its statistics. The
    syntax (and ``mps``) is checked without importing torch; only CUDA needs torch to look.
    """
    if value is None:
        return
    match = _DEVICE.fullmatch(str(value))
    if match is None:
        raise ValueError(
            f"{name('device')} {str(value)!r} is not a device sklens can use; use cpu, cuda or "
            "cuda:N"
        )
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cpu":
        return
    if kind == "mps":
        raise ValueError(
            f"{name('device')} {value}: MPS has no float64, which the scan's statistics need; "
            f"use {assign('device', 'cpu')}"
        )
    import torch

    if kind == "cuda":
        if torch.version.cuda is None:
            why = f"this torch ({torch.__version__}) was built without CUDA"
        elif not torch.cuda.is_available():
            why = "no CUDA GPU is visible"
        elif index >= torch.cuda.device_count():
            why = f"there are only {torch.cuda.device_count()} CUDA GPU(s)"
        else:
            return
        raise ValueError(f"{name('device')} {value}: {why}; use {assign('device', 'cpu')}")


def output_dir(path: str | os.PathLike, what: str | None = None, *, create: bool = True) -> Path:
    """Create ``path`` if needed and prove it writable, before any work goes into it.

    ``what`` names the directory in errors (default: the ``out`` setting). With ``create=False``
    a missing ``path`` is not made: its parent (where a run stages its work beside it) is proved
    writable instead.
    """
    path = Path(path)
    what = what or name("out")
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{what} {path} is a file, not a directory; pass a directory (it is created if missing)"
        )
    where = path if create or path.is_dir() else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sklens-write-test-", dir=where)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OSError(
            f"cannot write in {what} {path} ({err.strerror or err}); choose a directory you can "
            "write to"
        ) from err
    return path


def _coerce(value: str) -> object:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def label_spec(spec: str) -> tuple[str, Any]:
    """``label:KEY`` -> ``(KEY, None)``; ``label:KEY=VALUE`` -> ``(KEY, VALUE)`` with VALUE read as
    a bool, int or float where it is one."""
    key, sep, value = spec[len("label:") :].partition("=")
    if not spec.startswith("label:") or not key.strip():
        raise ValueError(
            f"{name('metric')} {spec!r} names no meta field; use label:KEY or label:KEY=VALUE, "
            f"e.g. {assign('metric', 'label:skill=spatial')}"
        )
    return key, (_coerce(value) if sep else None)


def metric_spec(spec: str) -> None:
    """``loss`` | ``confidence`` | ``choice_confidence`` | ``label:KEY`` | ``label:KEY=VALUE``."""
    if spec in ("loss", "confidence", "choice_confidence"):
        return
    if not spec.startswith("label:"):
        raise ValueError(
            f"unknown metric {spec!r}: use loss, confidence, choice_confidence, label:KEY or "
            "label:KEY=VALUE"
        )
    label_spec(spec)


def task(value: str, data: str | None = None) -> None:
    """A named task or an existing ``.jsonl`` file; ``data`` only where the task reads it."""
    if value not in TASKS:
        if not str(value).endswith(".jsonl"):
            raise ValueError(
                f"unknown task {value!r}: use one of {', '.join(TASKS)} or a FILE.jsonl"
            )
        _existing_file("task", value)
    if data is not None:
        if value not in DATA_TASKS:
            raise ValueError(
                f"{name('data')} is only read by the {', '.join(DATA_TASKS[:-1])} and "
                f"{DATA_TASKS[-1]} tasks; "
                f"task {value!r} would ignore it: drop {name('data')}"
            )
        if not (value == "arithmetic" and Path(data).is_dir()):  # a folder of */task.json
            _existing_file("data", data)


def site(value: str) -> None:
    """A site as the command line spells it: a builtin, a hook (template), or ``sae:DIR,...``."""
    if value in SITE_NAMES:
        return
    if value.startswith("sae:"):
        dirs = [d for d in value[len("sae:") :].split(",") if d]
        bad = [d for d in dirs if _FILES.get() and not (Path(d) / "cfg.json").is_file()]
        if not dirs or bad:
            raise ValueError(
                f"{name('site')} sae:DIR needs directories of SAEs saved by SAELens "
                f"(sae.save_model(DIR): cfg.json and weights); not one: {bad or value!r}; e.g. "
                f"{assign('site', 'sae:saes/layer8')}"
            )
        return
    if not re.match(r"^blocks\.(\{layer\}|\d+)\.\S+$", value):
        raise ValueError(
            f"{name('site')} must be one of {', '.join(SITE_NAMES)}, a hook of each layer written "
            f"with {{layer}}, or sae:DIR; got {value!r}; e.g. {assign('site', 'heads')} or "
            f"{assign('site', 'blocks.{layer}.hook_resid_mid')}"
        )


def finite_number(text: str) -> bool:
    """Whether ``text`` spells a finite number (``--steering`` factors)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _existing_file(field: str, path: str) -> None:
    if _FILES.get() and not Path(path).is_file():
        where = "is a directory" if Path(path).is_dir() else "does not exist"
        raise FileNotFoundError(f"{name(field)} {path}: {where}; pass an existing file")


def json_file(path: Path, fix: str) -> Any:
    """The parsed JSON of ``path``; a damaged file is a ValueError naming the file, the line and
    ``fix`` (what to do about it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}): the file is truncated or damaged "
            f"(or was edited); {fix}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason}); {fix}") from err
