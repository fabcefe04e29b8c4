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
    ABLATION_MODES,
    BACKENDS,
    DATA_TASKS,
    GROUP_MEASURES,
    MEASURES,
    REDUCE_RULES,
    SITE_NAMES,
    TASKS,
)

_FLAGS: ContextVar[bool] = ContextVar("sklens_flags", default=False)
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


def name(field: str) -> str:
    """``top_k`` as the user wrote it: ``top_k`` in Python, ``--top-k`` on the command line."""
    return "--" + field.replace("_", "-") if _FLAGS.get() else field


def assign(field: str, value: Any) -> str:
    """The fix in the user's syntax: ``top_k=10`` in Python, ``--top-k 10`` on the command line."""
    return f"{name(field)} {value}" if _FLAGS.get() else f"{field}={value!r}"


def integer(field: str, value: Any, *, minimum: int | None = None, meaning: str = "") -> int:
    """``value`` as an int, refusing floats, bools and strings (``n_tokens=2.5``)."""
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


def study(config: Any) -> None:
    """Every setting of a ``StudyConfig`` that can be checked without data or a model."""
    task(config.task, config.data)
    if config.metric is not None:
        metric_spec(config.metric)
    choice("backend", config.backend, BACKENDS)
    choice("reduce", config.reduce, REDUCE_RULES)
    device(config.device)
    for field, minimum, meaning in (
        ("top_k", 1, "how many top neurons to report"),
        ("n_tokens", 1, "soft-prompt length"),
        ("steps", 1, "training steps"),
        ("batch_size", 1, "examples per forward pass"),
        ("n_train", 1, "training examples"),
        ("n_val", MIN_SCAN, "validation examples; a correlation needs 3"),
        ("n_extremal", 1, "examples shown per neuron and direction"),
        ("n_random", 1, "random neuron sets in the causal check"),
        ("n_causal", 2, "examples in the causal check"),
        ("permutations", 0, "0 for none"),
        ("patience", 0, "evaluations without improvement before training stops; 0: never"),
        ("eval_every", 1, "training steps between plateau evaluations"),
        ("n_plateau", 0, "training examples held out to detect the plateau"),
        ("n_confirm", 0, "examples that re-measure the top-K; 0 skips the confirmation"),
    ):
        integer(field, getattr(config, field), minimum=minimum, meaning=meaning)
    integer("seed", config.seed)
    mi_bins(config.mi_bins, config.n_val)
    site(config.site)
    if config.mi_bins and config.permutation_groups:
        raise ValueError(
            f"{name('mi_bins')} ranks by marginal mutual information, but "
            f"{name('permutation_groups')} asks for a within-group statistic: drop one of them"
        )
    positive("lr", config.lr)
    _splits(config)
    if config.seeds:
        seeds = items(config.seeds)
        bad = [s for s in seeds if not re.fullmatch(r"-?\d+", s)]
        if bad or len(set(seeds)) < 2:
            raise ValueError(
                f"{name('seeds')} must be two or more different whole numbers separated by "
                f"commas, got {config.seeds!r}; e.g. {assign('seeds', '0,1,2')}"
            )
    choices("ablate_modes", config.ablate_modes, ABLATION_MODES)
    if getattr(config, "attribute", False) and config.site != "mlp":
        raise ValueError(
            f"{name('attribute')} attributes to MLP neurons only for now, but "
            f"{assign('site', config.site)}: drop one of them"
        )
    if config.steering:
        factors = items(config.steering)
        bad = [f for f in factors if not _finite_number(f)]
        if bad or not factors:
            raise ValueError(
                f"{name('steering')} must be numbers separated by commas (the factors that scale "
                f"the top-K), got {bad}; e.g. {assign('steering', '0,0.5,2,4')}"
            )
    measures = choices("measures", config.measures, MEASURES)
    if bool(items(config.covariates)) != ("partial_pearson" in measures):
        raise ValueError(
            f"{name('covariates')} and {name('measures')} partial_pearson go together: the "
            "covariates are what partial_pearson controls for"
        )


def site(value: str) -> None:
    """A site as the command line spells it: a builtin, a hook (template), or ``sae:DIR,...``."""
    if value in SITE_NAMES:
        return
    if value.startswith("sae:"):
        dirs = [d for d in value[len("sae:") :].split(",") if d]
        bad = [d for d in dirs if not (Path(d) / "cfg.json").is_file()]
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


def _finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _existing_file(field: str, path: str) -> None:
    if not Path(path).is_file():
        where = "is a directory" if Path(path).is_dir() else "does not exist"
        raise FileNotFoundError(f"{name(field)} {path}: {where}; pass an existing file")


def _splits(config: Any) -> None:
    """The plateau slice and the confirmation split leave enough examples to use."""
    if config.patience and not 1 <= config.n_plateau < config.n_train:
        raise ValueError(
            f"{assign('n_plateau', config.n_plateau)} must hold out between 1 and "
            f"{name('n_train')} − 1 = {config.n_train - 1} training examples to detect the "
            f"plateau; change it, or pass {assign('patience', 0)} to train all {name('steps')}"
        )
    if 0 < config.n_confirm < 4:
        raise ValueError(
            f"{assign('n_confirm', config.n_confirm)} is too few to confirm on (at least 4); "
            f"raise it, or pass {assign('n_confirm', 0)} to skip the confirmation"
        )
    if items(config.measures) and config.n_confirm == 0:
        raise ValueError(
            f"{name('measures')} are computed on the confirmation split, never on the examples "
            f"that selected the neurons: pass {name('n_confirm')} > 0"
        )


def study_data(config: Any, task: Any) -> str:
    """Check the settings that refer to the task's examples; return the metric spec to use.

    ``task`` has ``name``, ``val`` (the examples the metric is computed on), ``default_metric``
    and ``group_by``, as ``sklens.app.tasks.TaskData``.
    """
    spec = config.metric or task.default_metric
    if spec is None:
        raise ValueError(f"task {task.name!r} has no default metric: pass {name('metric')}")
    if spec.startswith("label:"):
        for split, examples, fix in _metric_splits(config, task):
            _label_values(spec, examples, split, fix)
    if config.permutation_groups is not None:
        _field_everywhere("permutation_groups", config.permutation_groups, task.val)
        if spec.startswith("label:"):
            _varies_within_groups(spec, config.permutation_groups, task.val)
    for covariate in items(config.covariates):
        _field_everywhere("covariates", covariate, task.val, numeric=True)
    grouped = [m for m in items(config.measures) if m in GROUP_MEASURES]
    if grouped and task.group_by is None:
        raise ValueError(
            f"{name('measures')} {', '.join(grouped)} compare groups, but task {task.name!r} "
            f"names none (only {', '.join(TASKS)} do); drop them"
        )
    return spec


def _metric_splits(config: Any, task: Any) -> list[tuple[str, Sequence[Any], str]]:
    """The splits a run computes its metric on: each one's name, examples, and the setting that
    changes it (where a constant metric there can be fixed)."""
    splits = [("validation", task.val, f"raise {name('n_val')}")]
    if task.confirm:
        fix = f"raise {name('n_confirm')} or skip the confirmation ({assign('n_confirm', 0)})"
        splits.append(("confirmation", task.confirm, fix))
    if task.causal and (config.ablate or config.steering):
        splits.append(("causal", task.causal, f"raise {name('n_causal')}"))
    return splits


def _varies_within_groups(spec: str, groups: str, examples: Sequence[Any]) -> None:
    """A within-group correlation needs the metric to vary inside some group."""
    key, positive = label_spec(spec)
    seen: dict[Any, set[Any]] = {}
    for e in examples:
        value = e.meta[key] == positive if positive is not None else e.meta[key]
        seen.setdefault(str(e.meta[groups]), set()).add(value)
    if all(len(values) < 2 for values in seen.values()):
        raise ValueError(
            f"{name('metric')} {spec} is constant within every group of {groups!r} (it is "
            f"a function of {groups!r}), so a within-group correlation is undefined; group by "
            f"another field or drop {name('permutation_groups')}"
        )


def _field_everywhere(
    field: str, key: str, examples: Sequence[Any], numeric: bool = False, typed: str = ""
) -> None:
    """Refuse a meta field that some examples lack (or, with ``numeric``, hold a non-number in);
    ``typed`` is the setting's value as the user wrote it (default: ``key``)."""
    setting = f"{name(field)} {typed or key}"
    for i, e in enumerate(examples):
        if key not in e.meta:
            fields = sorted(set().union(*(e.meta for e in examples)))
            raise ValueError(
                f"{setting}: validation example {i} ({_short(e.instruction)}) has no meta field "
                f"{key!r}; the examples have {fields}"
            )
        value = e.meta[key]
        if numeric and (isinstance(value, bool) or not isinstance(value, Real)):
            raise ValueError(
                f"{setting}: meta field {key!r} is {value!r} in validation example {i}, not a number"
            )


def _label_values(
    spec: str, examples: Sequence[Any], split: str = "validation", fix: str = ""
) -> None:
    """The checks ``sklens.metrics.label`` makes while scanning, made before training on the
    ``split`` it will be computed on, and phrased as the spec the user wrote."""
    key, positive = label_spec(spec)
    _field_everywhere("metric", key, examples, typed=spec)
    values = [e.meta[key] for e in examples]
    if positive is None:
        for v in values:
            if not isinstance(v, (bool, Real)):
                usable = next((u for u in values if u is not None), v)  # None never matches
                raise ValueError(
                    f"{name('metric')} {spec}: meta field {key!r} holds {v!r}, not a number; "
                    f"compare it with a value to make a binary metric, e.g. "
                    f"{assign('metric', f'label:{key}={usable}')}"
                )
        numbers = [float(v) for v in values]
        bad = [i for i, v in enumerate(numbers) if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"{name('metric')} {spec}: meta field {key!r} is NaN or infinite in "
                f"{len(bad)} validation example(s), e.g. {_short(examples[bad[0]].instruction)}; "
                "fix or drop those examples"
            )
    else:
        numbers = [1.0 if v == positive else 0.0 for v in values]
    if len(set(numbers)) < 2:
        seen = sorted({str(v) for v in values})
        usable = [v for v in seen if v != "None" and v != str(positive)] or seen
        raise ValueError(
            f"{name('metric')} {spec} is {numbers[0]} for every {split} example "
            f"({len(examples)}), so no neuron can correlate with it there; {key!r} takes the "
            f"values {seen[:10]}"
            + (
                f": choose one that occurs, e.g. {assign('metric', f'label:{key}={usable[0]}')}"
                if positive is not None
                else ""
            )
            + (f"; or {fix}" if fix and split != "validation" else "")
        )


def _short(text: str, width: int = 50) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


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
