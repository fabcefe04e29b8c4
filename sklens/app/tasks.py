"""Named tasks for the command line: data, split and default metric of each study."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from sklens import validate
from sklens.app.config import StudyConfig
from sklens.causal.behaviour import group_labels
from sklens.causal.counterfactual import MIN_PAIRS
from sklens.causal.edits import NAMED
from sklens.causal.edits import pairs as edit_pairs
from sklens.data import source
from sklens.data.arithmetic import generated_source
from sklens.data.bigbench import bigbench_arithmetic, load_bigbench
from sklens.data.example import Example
from sklens.data.hans import generate_hans, load_hans
from sklens.data.jsonl import load_jsonl
from sklens.data.skillmix import generate_skillmix, load_skillmix
from sklens.data.split import train_val_split
from sklens.units.sites import SAELatents, Site, site_of

logger = logging.getLogger("sklens")

DEFAULT_METRICS = {
    "arithmetic": "loss",  # RQ3: no label, the model's own per-example loss
    "hans": "label:heuristic=lexical_overlap",  # RQ2
    "skillmix": "label:skill=spatial",  # RQ1
}


DEFAULT_GROUPS = {"arithmetic": "operation", "hans": "heuristic", "skillmix": "skill"}


@dataclass
class TaskData:
    """A task's disjoint splits: ``train`` (the prompt), ``val`` (selects the neurons),
    ``confirm`` (re-measures them) and ``causal`` (the causal check); ``rest``, the examples of
    a fixed pool (BigBench, a file) that no split took."""

    name: str
    train: list[Example]
    val: list[Example]
    default_metric: str | None
    group_by: str | None = None
    confirm: list[Example] = field(default_factory=list)
    causal: list[Example] = field(default_factory=list)
    rest: list[Example] = field(default_factory=list)  # in no split: e.g. counterfactual pairs
    source: dict[str, Any] = field(default_factory=dict)  # generator and seed, or files' sha256


def load_task(
    task: str,
    *,
    n_train: int,
    n_val: int,
    seed: int,
    data: str | None = None,
    n_confirm: int = 0,
    n_causal: int = 0,
    stratify_causal: bool = False,
    shuffle_label: str | None = None,
) -> TaskData:
    """The examples of a named task (or a .jsonl file), shuffled with ``seed`` and cut into
    disjoint splits (``confirm`` and ``causal`` from the examples after ``train`` and ``val``).

    With ``stratify_causal`` the causal split takes as many examples of each of the task's
    groups (``DEFAULT_GROUPS``: e.g. each operation) as it can, in turn, from the examples after
    ``confirm``, so a causal check does not rest on a handful of one group (the paper's RQ3
    division detectors met 5 divisions in 48).

    ``data`` replaces the built-in data: a HANS ``.txt``, a Skill-Mix ``.jsonl``, or for
    arithmetic a BigBench ``task.json`` or a folder of ``*/task.json`` files.

    ``shuffle_label`` names a meta field whose values are permuted among the examples before
    the splits are cut (``shuffled_label``): the negative control."""
    validate.task(task, data)
    n = n_train + n_val + n_confirm + n_causal
    # a generated pool is prefix-stable: room to balance the causal split changes no other split
    pool, origin = _pool(task, data, n + (2 * n_causal if stratify_causal else 0), seed)
    pool = _distinct(pool, task)
    if origin["kind"] == "files" or task == "arithmetic":
        # a fixed pool: shuffled whole, so its order does not depend on how many are used. A
        # generated one is random already and prefix-stable, and stays in order: growing a later
        # split (--n-confirm, the causal split of --ablate) leaves the earlier ones as they were.
        random.Random(seed).shuffle(pool)
    if len(pool) < n:
        raise ValueError(
            f"task {task!r} has {len(pool)} examples, fewer than the {n} its splits need "
            f"({validate.name('n_train')} {n_train} + {validate.name('n_val')} {n_val} + "
            f"{validate.name('n_confirm')} {n_confirm} + causal {n_causal}); lower them"
        )
    if shuffle_label is not None:
        pool = shuffled_label(pool, shuffle_label, seed)
        origin = {**origin, "shuffled_label": shuffle_label}
    first = n_train + n_val
    train, val = train_val_split(pool[:first], n_val, seed=seed)
    later = pool[first + n_confirm :]
    group = DEFAULT_GROUPS.get(task) if stratify_causal else None
    causal, rest = (
        balanced(later, n_causal, group) if group else (later[:n_causal], later[n_causal:])
    )
    return TaskData(
        task,
        train,
        val,
        DEFAULT_METRICS.get(task),
        DEFAULT_GROUPS.get(task),
        confirm=pool[first : first + n_confirm],
        causal=causal,
        rest=rest,
        source=origin,
    )


def shuffled_label(examples: list[Example], field: str, seed: int) -> list[Example]:
    """``examples`` with meta ``field``'s values permuted among them (seeded): a label that
    nothing in the examples' text can predict, for a negative control of the whole pipeline."""
    missing = [i for i, e in enumerate(examples) if field not in e.meta]
    if missing:
        fields = sorted({k for e in examples for k in e.meta})
        raise ValueError(
            f"{validate.name('shuffle_label')} {field!r} is not a meta field of every example "
            f"(example {missing[0]} has none); the task's fields: {', '.join(fields)}"
        )
    values = [e.meta[field] for e in examples]
    random.Random(f"shuffle {field} {seed}").shuffle(values)
    return [
        Example(e.instruction, e.completion, {**e.meta, field: v})
        for e, v in zip(examples, values, strict=True)
    ]


def balanced(examples: list[Example], n: int, field: str) -> tuple[list[Example], list[Example]]:
    """``n`` of ``examples`` taken one group of meta ``field`` at a time, in turn (groups in
    order of first appearance, each group's examples in their order), and the others in their
    order: every group is as equally represented as its size allows."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(str(e.meta.get(field)), []).append(i)
    taken: list[int] = []
    queues = [list(reversed(ids)) for ids in groups.values()]
    while len(taken) < n and any(queues):
        for queue in queues:
            if queue and len(taken) < n:
                taken.append(queue.pop())
    chosen = set(taken)
    return [examples[i] for i in sorted(taken)], [
        e for i, e in enumerate(examples) if i not in chosen
    ]


def _distinct(pool: list[Example], task: str) -> list[Example]:
    """The pool with each (instruction, completion) once: a repeated example would sit in two
    splits and make held-out numbers partly in-sample."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for e in pool:
        if (e.instruction, e.completion) not in seen:
            seen.add((e.instruction, e.completion))
            unique.append(e)
    if len(unique) < len(pool):
        logger.warning(
            "task %s has %d repeated examples (the same instruction and completion); each is "
            "used once, leaving %d, so no two splits share one",
            task, len(pool) - len(unique), len(unique),
        )  # fmt: skip
    return unique


def _pool(task: str, data: str | None, n: int, seed: int) -> tuple[list[Example], dict[str, Any]]:
    """A task's examples before the split, and where they came from (``summary.json``)."""
    if task == "arithmetic":
        if data:
            return load_bigbench(data, seed=seed), source.files(data)
        return bigbench_arithmetic(seed=seed), generated_source(0)
    if task == "hans":
        if data:
            return load_hans(data), source.files(data)
        return generate_hans(n, seed=seed), source.generated("sklens.data.generate_hans", seed)
    if task == "skillmix":
        if data:
            return load_skillmix(data), source.files(data)
        return (
            generate_skillmix(n, seed=seed),
            source.generated("sklens.data.generate_skillmix", seed),
        )
    return load_jsonl(task), source.files(task)


def training_kwargs(config: StudyConfig, task: TaskData) -> tuple[list, dict[str, Any]]:
    """The examples the prompt trains on, and the plateau settings, from a study's config
    (``StudyConfig`` has checked that the plateau slice fits)."""
    if config.train.patience == 0:
        return task.train, {"steps": config.train.steps}
    fit, plateau_slice = (
        task.train[: -config.train.n_plateau],
        task.train[-config.train.n_plateau :],
    )
    return fit, {
        "steps": config.train.steps,
        "val_examples": plateau_slice,
        "eval_every": config.train.eval_every,
        "patience": config.train.patience,
    }


def study_site(text: str) -> Site:
    """The site ``--site`` names (``validate.site`` checked the spelling): a builtin, a hook
    template, or ``sae:DIR[,DIR]`` — SAEs saved by SAELens (``sae.save_model(DIR)``), loaded
    from disk, offline."""
    if not text.startswith("sae:"):
        return site_of(text)
    from sae_lens import SAE  # an optional dependency: only this spelling needs it

    return SAELatents.of(
        [SAE.load_from_disk(path) for path in text.removeprefix("sae:").split(",") if path]
    )


def behaviour_examples(config: StudyConfig, task: TaskData) -> list[Example]:
    """The examples ``--behaviour-by`` compares the model's behaviour on: those the prompt never
    trained on (selection and confirmation splits), with ``--behaviour-where FIELD=VALUE`` only
    those whose ``meta[FIELD]`` reads ``VALUE``; refused with the fix where too few are left."""
    examples = task.val + task.confirm
    where = config.confirm.behaviour_where
    if where is not None:
        key, _, value = where.partition("=")
        examples = [e for e in examples if str(e.meta.get(key)) == value]
        if not examples:
            seen = sorted({str(e.meta.get(key)) for e in task.val + task.confirm})
            raise ValueError(
                f"{validate.assign('behaviour_where', where)} keeps none of the "
                f"{len(task.val + task.confirm)} selection and confirmation examples; "
                f"{key!r} takes the values {seen[:10]}"
            )
    try:
        group_labels(examples, config.confirm.behaviour_by)
    except ValueError as err:
        raise ValueError(f"{validate.name('behaviour_by')}: {err}") from None
    return examples


def counterfactual_pairs(
    config: StudyConfig, task: TaskData, edit: str
) -> tuple[list[tuple[Example, Example]], dict[str, Any]]:
    """At most ``n_causal`` pairs of the named edit (``sklens.edits.NAMED``) made from examples
    held out from the selection (the pool no split took, then the confirmation split), with the
    edit's note; refused with the fix where it makes fewer than ``MIN_PAIRS``."""
    source = task.rest + task.confirm
    setting = validate.assign("counterfactual", edit)
    try:
        made, note = edit_pairs(source, NAMED[edit], name=edit)
    except ValueError:
        made, note = [], {"edit": edit, "tried": len(source), "paired": 0}
    made = made[: config.causal.n_causal]
    if len(made) < MIN_PAIRS:
        raise ValueError(
            f"{setting} makes {len(made)} pair(s) from the {len(source)} held-out examples of "
            f"task {task.name!r} (at least {MIN_PAIRS} give a p-value below 0.0625): it applies "
            f"to other tasks' examples (sklens.edits), or raise {validate.name('n_confirm')}"
        )
    return made, note | {"used": len(made)}
