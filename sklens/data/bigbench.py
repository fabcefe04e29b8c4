"""BigBench arithmetic (the paper's RQ3) and any BigBench ``task.json`` file.

Each question becomes ``Question: What is 68824 times 42716?\\nChoices: ...\\nAnswer:`` with the
correct choice as the completion. BigBench lists the correct choice *last* in every example, a
positional giveaway; sklens shuffles the choices with a per-example seed unless asked to keep
BigBench's order (``shuffle_choices=False``).

``meta["last_digit_decides"]`` is the paper's shortcut: the correct answer is the only choice whose
last digit equals the last digit of the true result, so the last digits alone decide the question.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklens.cache import BIGBENCH, fetch, repair_hint
from sklens.data.example import Example

OPERATIONS = {
    "plus": "addition",
    "minus": "subtraction",
    "times": "multiplication",
    "divided by": "division",
}
_QUESTION = re.compile(r"What is (-?\d+) (plus|minus|times|divided by) (-?\d+)\?")
SUBTASKS = tuple(
    f"{d}_digit_{op}"
    for d in range(1, 6)
    for op in ("addition", "subtraction", "multiplication", "division")
)
DEFAULT_SUBTASKS = (
    "5_digit_addition",
    "5_digit_subtraction",
    "5_digit_multiplication",
    "5_digit_division",
)


def load_task(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``examples`` of a BigBench JSON task file, checked for the fields sklens uses; a
    damaged file or example names its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        task = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}): the file is truncated or damaged; "
            + repair_hint(path)
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable BigBench task.json ({err}); {repair_hint(path)}"
        ) from err
    examples = task.get("examples") if isinstance(task, dict) else None
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{path} has no 'examples' list: not a BigBench JSON task")
    for i, ex in enumerate(examples):
        problem = _problem(ex)
        if problem:
            raise ValueError(
                f"{path}:{_example_line(text, i)}: example {i} {problem}; {repair_hint(path)}"
            )
    return examples


def _problem(ex: Any) -> str | None:
    """What keeps one BigBench example from being used, if anything."""
    if not isinstance(ex, dict):
        return f"is a {type(ex).__name__}, not an object"
    if not isinstance(ex.get("input"), str):
        return "needs a string 'input'"
    if "target_scores" in ex:
        scores = ex["target_scores"]
        if not isinstance(scores, dict) or not scores:
            return "has a 'target_scores' that is not a non-empty object"
        if not all(isinstance(v, (int, float)) for v in scores.values()):
            return "has a non-number in 'target_scores'"
        return None
    target = ex.get("target")
    if isinstance(target, str) or (
        isinstance(target, list) and target and all(isinstance(t, str) for t in target)
    ):
        return None
    return "needs 'target' (a string or a list of strings) or 'target_scores'"


def _example_line(text: str, index: int) -> int | None:
    """The line on which ``examples[index]`` starts (only computed for an error message)."""
    match = re.search(r'"examples"\s*:\s*\[', text)
    if match is None:
        return None
    decoder, pos = json.JSONDecoder(), match.end()
    for i in range(index + 1):
        while text[pos] in " \t\r\n,":
            pos += 1
        if i == index:
            return text.count("\n", 0, pos) + 1
        _, pos = decoder.raw_decode(text, pos)


def true_result(question: str) -> int | None:
    """The exact result of a BigBench arithmetic question (None if it does not parse)."""
    match = _QUESTION.search(question)
    if match is None:
        return None
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    if op == "divided by":
        return a // b if b != 0 and a % b == 0 else None
    return {"plus": a + b, "minus": a - b, "times": a * b}[op]


def last_digit_decides(choices: Sequence[str], answer: str, result: int | None) -> bool:
    """True when ``answer`` is the only choice ending in the true result's last digit."""
    if result is None:
        return False
    digit = str(abs(result))[-1]
    matching = [c for c in choices if c[-1:].isdigit() and c[-1] == digit]
    return matching == [answer]


def _correct(ex: dict[str, Any]) -> str:
    if "target_scores" in ex:
        return max(ex["target_scores"], key=ex["target_scores"].get)
    target = ex["target"]
    return target[0] if isinstance(target, list) else str(target)


def task_examples(
    path: str | os.PathLike,
    *,
    subtask: str | None = None,
    shuffle_choices: bool = True,
    seed: int = 0,
) -> list[Example]:
    """Examples from one BigBench task file, in the paper's multiple-choice shape."""
    name = subtask or Path(path).parent.name
    out = []
    for i, ex in enumerate(load_task(path)):
        answer = _correct(ex)
        choices = list(ex.get("target_scores", {answer: 1.0}))
        if shuffle_choices:
            random.Random(f"{seed}:{name}:{i}").shuffle(choices)
        result = true_result(ex["input"])
        match = _QUESTION.search(ex["input"])
        digits = re.match(r"(\d+)_digit", name)
        meta = {
            "subtask": name,
            "operation": OPERATIONS[match.group(2)] if match else None,
            "digits": int(digits.group(1)) if digits else None,
            "choices": choices,
            "answer": answer,
            "result": result,
            "last_digit_decides": last_digit_decides(choices, answer, result),
        }
        instruction = f"Question: {ex['input']}\nChoices: {', '.join(choices)}\nAnswer:"
        out.append(Example(instruction, answer, meta))
    return out


def bigbench_arithmetic(
    subtasks: Sequence[str] = DEFAULT_SUBTASKS,
    *,
    n_per_subtask: int | None = None,
    shuffle_choices: bool = True,
    seed: int = 0,
) -> list[Example]:
    """BigBench arithmetic from the ``bigbench==1.0.0`` sdist (fetched once into the cache).

    ``n_per_subtask`` takes the first ``n`` examples of each subtask (deterministic).
    """
    unknown = [s for s in subtasks if s not in SUBTASKS]
    if unknown:
        raise ValueError(f"unknown arithmetic subtasks {unknown}; choose from {list(SUBTASKS)}")
    root = fetch(BIGBENCH) / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks" / "arithmetic"
    out = []
    for name in subtasks:
        examples = task_examples(
            root / name / "task.json", shuffle_choices=shuffle_choices, seed=seed
        )
        out.extend(examples[:n_per_subtask])
    return out
