"""Checks of a study's settings against its task's examples, made once the examples are loaded
and before the model is: a label metric that is constant on a split, a meta field some examples
lack, a grouping under which the metric cannot vary, a behaviour grouping or a counterfactual
edit the examples cannot give. Errors name the setting as the user wrote it
(``sklens.validate.name``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

from sklens.app.config import StudyConfig
from sklens.app.tasks import TaskData, behaviour_examples, counterfactual_pairs
from sklens.data.example import Example
from sklens.validate import assign, label_spec, name
from sklens.vocabulary import GROUP_MEASURES, TASKS


def study_data(config: StudyConfig, task: TaskData) -> str:
    """Check the settings that refer to the task's examples; return the metric spec to use.

    ``task`` has ``name``, ``val`` (the examples the metric is computed on), ``default_metric``
    and ``group_by``, as ``sklens.app.tasks.TaskData``.
    """
    spec = config.scan.metric or task.default_metric
    if spec is None:
        raise ValueError(f"task {task.name!r} has no default metric: pass {name('metric')}")
    if spec.startswith("label:"):
        for split, examples, fix in _metric_splits(config, task):
            _label_values(spec, examples, split, fix)
    groups = config.scan.permutation_groups
    if groups is not None:
        _field_everywhere("permutation_groups", groups, task.val)
        if spec.startswith("label:"):
            _varies_within_groups(spec, groups, task.val)
    for covariate in config.confirm.covariates:
        _field_everywhere("covariates", covariate, task.val, numeric=True)
    grouped = [m for m in config.confirm.measures if m in GROUP_MEASURES]
    if grouped and task.group_by is None:
        raise ValueError(
            f"{name('measures')} {', '.join(grouped)} compare groups, but task {task.name!r} "
            f"names none (only {', '.join(TASKS)} do); drop them"
        )
    if config.confirm.behaviour_by is not None:
        behaviour_examples(config, task)
    for edit in config.causal.counterfactual:
        counterfactual_pairs(config, task, edit)
    return spec


def _metric_splits(config: StudyConfig, task: TaskData) -> list[tuple[str, Sequence[Any], str]]:
    """The splits a run computes its metric on: each one's name, examples, and the setting that
    changes it (where a constant metric there can be fixed)."""
    splits = [("validation", task.val, f"raise {name('n_val')}")]
    if task.confirm:
        fix = f"raise {name('n_confirm')} or skip the confirmation ({assign('n_confirm', 0)})"
        splits.append(("confirmation", task.confirm, fix))
    if task.causal and (config.causal.ablate or config.causal.steering):
        splits.append(("causal", task.causal, f"raise {name('n_causal')}"))
    return splits


def _varies_within_groups(spec: str, groups: str, examples: Sequence[Example]) -> None:
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
    field: str, key: str, examples: Sequence[Example], numeric: bool = False, typed: str = ""
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
    spec: str, examples: Sequence[Example], split: str = "validation", fix: str = ""
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
