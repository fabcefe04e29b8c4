"""BigBench arithmetic (the paper's RQ3) and any BigBench ``task.json`` file.

Each question becomes ``Question: What is 68824 times 42716?\\nChoices: ...\\nAnswer:`` with the
correct choice as the completion. BigBench lists the correct choice *last* in every example, a
positional giveaway; sklens shuffles the choices with a per-example seed unless asked to keep
BigBench's order (``shuffle_choices=False``).

Two shortcut flags in ``meta``, both worked out from the operands, never from the true result:

- ``last_digit_decides`` is the paper's shortcut and nothing else: the question is a
  multiplication and the correct answer is the only numeric choice whose last digit is
  ``(a % 10) * (b % 10) % 10``. False for every other operation.
- ``last_digit_unique`` asks the same of any operation whose result's last digit the operands' last
  digits fix: + and × (as above) and − (see ``operand_last_digit``). Division has no such digit,
  so there it is None, as it is for a question that does not parse.

``answer_only_negative`` is the other giveaway the paper's RQ3 discusses: the answer is the only
negative numeric choice.

Non-numeric choices ("banana", "house" in BigBench) never count as rivals.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklens.data.arithmetic import SUBTASKS, arithmetic_task
from sklens.data.example import Example
from sklens.models.artifacts import repair_hint

OPERATIONS = {
    "plus": "addition",
    "minus": "subtraction",
    "times": "multiplication",
    "divided by": "division",
}
_QUESTION = re.compile(r"What is (-?\d+) (plus|minus|times|divided by) (-?\d+)\?")
_NUMBER = re.compile(r"-?\d+")
DEFAULT_SUBTASKS = (
    "5_digit_addition",
    "5_digit_subtraction",
    "5_digit_multiplication",
    "5_digit_division",
)


def read_bigbench_records(path: str | os.PathLike) -> list[dict[str, Any]]:
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
        best = max(scores.values())
        if best <= 0:
            return "scores no choice above 0: it has no correct answer"
        tops = [k for k, v in scores.items() if v == best]
        if len(tops) > 1:
            shown = ", ".join(map(repr, tops))
            return f"scores {len(tops)} choices highest ({shown}): say which one is correct"
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


def operands(question: str) -> tuple[int, str, int] | None:
    """``(a, operation, b)`` of "What is a OP b?" (operation as in ``OPERATIONS``), or None."""
    match = _QUESTION.search(question)
    if match is None:
        return None
    return int(match.group(1)), OPERATIONS[match.group(2)], int(match.group(3))


def true_result(question: str) -> int | None:
    """The exact result of a BigBench arithmetic question (None if it does not parse)."""
    parsed = operands(question)
    if parsed is None:
        return None
    a, operation, b = parsed
    if operation == "division":
        return a // b if b != 0 and a % b == 0 else None
    return {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[operation]


def operand_last_digit(a: int, operation: str, b: int) -> int | None:
    """The last digit of ``|a OP b|`` as the operands' last digits and signs fix it; None for ÷.

    × gives ``(|a| % 10) * (|b| % 10) % 10``. For + and − the last digits give the result modulo
    10, ``m = (a % 10 ± b % 10) % 10``; the digit written is ``m`` when the result is ≥ 0 and
    ``(10 - m) % 10`` when it is negative (58458 − 68759 = −10301: m = 9, digit 1). The sign comes
    from comparing the operands (a ≥ b for a − b; a ≥ −b for a + b), never from the result, so
    this is what a reader of the question can know without doing the sum. For ÷ the quotient's
    last digit is not a function of the operands' last digits, so there is no digit to give.
    """
    if operation == "multiplication":
        return (abs(a) % 10) * (abs(b) % 10) % 10
    if operation == "addition":
        m, negative = (a % 10 + b % 10) % 10, a < -b
    elif operation == "subtraction":
        m, negative = (a % 10 - b % 10) % 10, a < b
    elif operation == "division":
        return None
    else:
        raise ValueError(
            f"unknown operation {operation!r}; expected one of {list(OPERATIONS.values())}"
        )
    return (10 - m) % 10 if negative else m


def _unique_ending(choices: Sequence[str], answer: str, digit: int) -> bool:
    """True when ``answer`` is the only numeric choice ending in ``digit``."""
    ending = [c for c in choices if _NUMBER.fullmatch(c) and int(c[-1]) == digit]
    return ending == [answer]


def last_digit_unique(question: str, choices: Sequence[str], answer: str) -> bool | None:
    """Whether the operands' last digits alone pick ``answer`` among ``choices``.

    True when ``answer`` is the only numeric choice ending in ``operand_last_digit`` of the
    question; None for divisions and for questions that do not parse (no such digit).
    """
    parsed = operands(question)
    digit = None if parsed is None else operand_last_digit(*parsed)
    if digit is None:
        return None
    return _unique_ending(choices, answer, digit)


def last_digit_decides(question: str, choices: Sequence[str], answer: str) -> bool:
    """The paper's shortcut: a multiplication whose answer the operands' last digits pick.

    True when the question is a multiplication and ``answer`` is the only numeric choice ending
    in ``(a % 10) * (b % 10) % 10``; False otherwise, whatever the operation's digits would say.
    """
    parsed = operands(question)
    return (
        parsed is not None
        and parsed[1] == "multiplication"
        and _unique_ending(choices, answer, operand_last_digit(*parsed))
    )


def answer_only_negative(choices: Sequence[str], answer: str) -> bool:
    """The answer is the only negative numeric choice: a giveaway when a subtraction's result
    is negative and no distractor is."""
    negative = [c for c in choices if _NUMBER.fullmatch(c) and c.startswith("-")]
    return negative == [answer]


def arithmetic_meta(question: str, choices: Sequence[str], answer: str) -> dict[str, Any]:
    """The meta fields worked out from a question, its choices and its answer (the shortcut
    flags among them), as ``task_examples`` writes them and ``sklens.edits`` rewrites them."""
    parsed = operands(question)
    return {
        "operation": parsed[1] if parsed else None,
        "choices": list(choices),
        "answer": answer,
        "result": true_result(question),
        "last_digit_decides": last_digit_decides(question, choices, answer),
        "last_digit_unique": last_digit_unique(question, choices, answer),
        "answer_only_negative": answer_only_negative(choices, answer),
    }


def arithmetic_instruction(question: str, choices: Sequence[str]) -> str:
    return f"Question: {question}\nChoices: {', '.join(choices)}\nAnswer:"


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
    return records_to_examples(
        read_bigbench_records(path), name, shuffle_choices=shuffle_choices, seed=seed
    )


def records_to_examples(
    records: Sequence[dict[str, Any]], name: str, *, shuffle_choices: bool = True, seed: int = 0
) -> list[Example]:
    """BigBench records (``input``, ``target``/``target_scores``) of the subtask ``name`` as
    examples; each one's choices shuffled with its own seed unless ``shuffle_choices=False``."""
    out = []
    for i, ex in enumerate(records):
        answer = _correct(ex)
        choices = list(ex.get("target_scores", {answer: 1.0}))
        if shuffle_choices:
            random.Random(f"{seed}:{name}:{i}").shuffle(choices)
        question = ex["input"]
        digits = re.match(r"(\d+)_digit", name)
        worked_out = arithmetic_meta(question, choices, answer)
        meta = {
            "subtask": name,
            "operation": worked_out.pop("operation"),
            "digits": int(digits.group(1)) if digits else None,
            **worked_out,
        }
        out.append(Example(arithmetic_instruction(question, choices), answer, meta))
    return out


def load_bigbench(path: str | os.PathLike, *, seed: int = 0) -> list[Example]:
    """Examples from a BigBench ``task.json``, or from every ``*/task.json`` under a directory
    (each subtask named by its folder, in sorted order), e.g. other arithmetic subtasks or a
    generated pool in the same shape."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*/task.json"))
    if not files:
        raise ValueError(f"{path} is neither a BigBench task.json nor a folder of */task.json")
    return [e for file in files for e in task_examples(file, seed=seed)]


def bigbench_arithmetic(
    subtasks: Sequence[str] = DEFAULT_SUBTASKS,
    *,
    n_per_subtask: int | None = None,
    shuffle_choices: bool = True,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    pool_seed: int = 0,
) -> list[Example]:
    """BigBench's arithmetic subtasks: generated (no download; ``sklens.data.arithmetic``), or
    read from BigBench's own files when ``data`` is a folder of ``<subtask>/task.json``.

    Args:
        subtasks: names such as ``"5_digit_multiplication"`` (``SUBTASKS`` lists all 20).
        n_per_subtask: the first ``n`` questions of each subtask (deterministic); all if None.
        shuffle_choices: shuffle each question's choices (seeded by ``seed``); BigBench lists
            the correct one last.
        seed: the choice shuffle's seed.
        data: a folder holding the original ``<subtask>/task.json`` files, e.g.
            ``bigbench/benchmark_tasks/arithmetic`` of a ``bigbench==1.0.0`` copy.
        pool_seed: the generator's seed (the questions themselves); ignored with ``data``.
    """
    unknown = [s for s in subtasks if s not in SUBTASKS]
    if unknown:
        raise ValueError(f"unknown arithmetic subtasks {unknown}; choose from {list(SUBTASKS)}")
    if n_per_subtask is not None and n_per_subtask < 1:
        raise ValueError(f"n_per_subtask must be a positive number or None, got {n_per_subtask}")
    out = []
    for name in subtasks:
        if data is None:
            records = arithmetic_task(name, seed=pool_seed)["examples"]
        else:
            path = Path(data) / name / "task.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{data} has no {name}/task.json: pass the folder that holds BigBench's "
                    "arithmetic subtasks (bigbench/benchmark_tasks/arithmetic), or leave data "
                    "out to generate them"
                )
            records = read_bigbench_records(path)
        examples = records_to_examples(
            records[:n_per_subtask], name, shuffle_choices=shuffle_choices, seed=seed
        )
        out.extend(examples)
    return out
