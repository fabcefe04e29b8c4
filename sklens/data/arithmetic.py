"""BigBench's arithmetic task, generated: the 20 subtasks in the shape of BigBench's ``task.json``.

The task's files came only inside the ``bigbench==1.0.0`` sdist, which PyPI no longer serves, so
sklens makes the questions itself, deterministically from a seed, in the same shape, and reads the
original files wherever a user still has them (``load_bigbench(DIR)``, ``sklens run --data DIR``).

The rule, as far as it can be established from 21 original questions of the 5-digit subtasks
with all their choices (kept in earlier sklens runs' CSVs and tests: 10 additions, 10
multiplications, 1 subtraction) and 13 divisions whose question and answer were kept:

- **Questions.** "What is A OP B?" with OP one of plus, minus, times, divided by. For ``d``-digit
  subtasks both operands are uniform ``d``-digit numbers (``10**(d-1)`` to ``10**d - 1``; 0 to 9
  for ``d = 1``: BigBench's own example is "What is 0 plus 1?"). Subtraction may go negative
  (−34599 is among the originals). A division is exact: the dividend is a uniform ``d``-digit
  number and the divisor one of its divisors other than 1 (a prime is divided by itself): the 13
  originals divide 13995 by 933, 33851 by 33851, never by 1.
- **Choices.** Seven, in this order: two distractors with as many characters as the answer (a
  minus sign counts), one with two fewer characters (left out when that is fewer than one), one
  with two more, then "banana", "house" and the correct answer, **last**. Each distractor is a
  uniform positive number of its length, different from the answer and from the others. All 21
  originals fit this rule exactly (e.g. 2959598230: 8256942891, 6856058598, 16619555,
  204563610029). Distractors are never negative, so a negative answer is the only negative
  choice (``answer_only_negative``).
- **Size.** 1,000 distinct questions per subtask, or every distinct question where a subtask has
  fewer (1-digit +, −, ×: 100; divisions of 1 and 2 digits: fewer still).

What follows for the paper's shortcut: a distractor's last digit is uniform, so a multiplication
is ``last_digit_decides`` when none of its four distractors ends like the answer, with probability
0.9⁴ ≈ 0.656 (656 ± 15 of a generated 1,000); BigBench's 5-digit multiplications have 637 of
1,000.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklens.data import source

GENERATOR_VERSION = 1
N_QUESTIONS = 1000
SYMBOLS = {
    "addition": "plus",
    "subtraction": "minus",
    "multiplication": "times",
    "division": "divided by",
}
SUBTASKS = tuple(f"{d}_digit_{op}" for d in range(1, 6) for op in SYMBOLS)
NON_NUMERIC = ("banana", "house")


def _parse(subtask: str) -> tuple[int, str]:
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown arithmetic subtask {subtask!r}; choose from {list(SUBTASKS)}")
    digits, _, operation = subtask.split("_", 2)
    return int(digits), operation


def _operand_range(digits: int) -> tuple[int, int]:
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def _divisors(a: int) -> list[int]:
    """The divisors of ``a`` a question may divide by: all but 1 (1 itself for ``a = 1``)."""
    small = [k for k in range(1, int(a**0.5) + 1) if a % k == 0]
    every = sorted(set(small) | {a // k for k in small})
    return every[1:] or [1]


def _all_questions(digits: int, operation: str) -> list[tuple[int, int]]:
    """Every distinct ``(a, b)`` of a subtask, for the subtasks with fewer than 1,000."""
    low, high = _operand_range(digits)
    if operation == "division":
        return [(a, b) for a in range(max(low, 1), high + 1) for b in _divisors(a)]
    return [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]


def _questions(digits: int, operation: str, rng: random.Random) -> list[tuple[int, int]]:
    """``N_QUESTIONS`` distinct operand pairs, or all of them where there are fewer."""
    if digits == 1 or (digits == 2 and operation == "division"):
        pairs = _all_questions(digits, operation)
        if len(pairs) <= N_QUESTIONS:
            rng.shuffle(pairs)
            return pairs
    low, high = _operand_range(digits)
    seen: dict[tuple[int, int], None] = {}
    while len(seen) < N_QUESTIONS:
        a = rng.randint(max(low, 1) if operation == "division" else low, high)
        b = rng.choice(_divisors(a)) if operation == "division" else rng.randint(low, high)
        seen.setdefault((a, b), None)
    return list(seen)


def _result(a: int, operation: str, b: int) -> int:
    if operation == "division":
        return a // b
    return {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[operation]


def distractors(answer: int, rng: random.Random) -> list[str]:
    """BigBench's numeric distractors for ``answer``: two of its length (in characters, a minus
    sign counted), one two shorter (if that leaves at least one digit), one two longer; each a
    uniform positive number of that length, distinct from the answer and from each other."""
    length = len(str(answer))
    out: list[str] = []
    for n in (length, length, length - 2, length + 2):
        if n < 1:
            continue
        low, high = _operand_range(n)
        while (x := str(rng.randint(low, high))) == str(answer) or x in out:
            pass
        out.append(x)
    return out


def arithmetic_task(subtask: str, *, seed: int = 0) -> dict[str, Any]:
    """One generated subtask (``"5_digit_multiplication"``, ...) as BigBench's ``task.json``
    holds it: ``{"name", "examples": [{"input", "target", "target_scores"}, ...]}``, the correct
    choice last. The same ``seed`` gives the same questions in every Python session."""
    digits, operation = _parse(subtask)
    rng = random.Random(f"sklens-arithmetic:{GENERATOR_VERSION}:{seed}:{subtask}")
    examples = []
    for a, b in _questions(digits, operation, rng):
        answer = _result(a, operation, b)
        choices = [*distractors(answer, rng), *NON_NUMERIC]
        scores = {c: 0.0 for c in choices} | {str(answer): 1.0}
        examples.append(
            {
                "input": f"What is {a} {SYMBOLS[operation]} {b}?",
                "target": str(answer),
                "target_scores": scores,
            }
        )
    return {"name": subtask, "examples": examples}


def write_arithmetic(
    directory: str | Path, subtasks: Sequence[str] = SUBTASKS, *, seed: int = 0
) -> Path:
    """Write generated subtasks as ``DIRECTORY/<subtask>/task.json`` (the layout ``load_bigbench``
    and ``sklens run --data`` read); return the directory."""
    directory = Path(directory)
    for name in subtasks:
        path = directory / name / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(arithmetic_task(name, seed=seed), indent=1) + "\n")
    return directory


def generated_source(seed: int) -> dict[str, Any]:
    """What a run records of generated arithmetic data (``summary.json``'s ``data.source``)."""
    return source.generated("sklens.data.arithmetic", seed, GENERATOR_VERSION)
