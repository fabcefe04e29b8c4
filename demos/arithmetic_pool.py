"""A small generated arithmetic pool in BigBench's ``task.json`` shape, for offline smoke runs.

BigBench's own files come from PyPI on first use, which tests (isolated cache, no network) and
offline machines without the cache cannot do. These questions have the same shape — "What is a
OP b?", seven choices: the answer, four numeric distractors, "banana" and "house" — so
``sklens.data.load_bigbench`` reads them with every meta field the real data has, including
``last_digit_decides``: about half the multiplications get a distractor that ends in the
answer's last digit, so the shortcut flag takes both values. Not a substitute for BigBench in a
reproduction: ``results.json`` records which data a run used.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYMBOLS = {"addition": "plus", "subtraction": "minus", "multiplication": "times"}


def _question(op: str, digits: int, rng: random.Random) -> tuple[str, int]:
    low, high = 10 ** (digits - 1), 10**digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    if op == "division":
        quotient = rng.randint(1, max(1, high // b))
        return f"What is {b * quotient} divided by {b}?", quotient
    result = {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[op]
    return f"What is {a} {SYMBOLS[op]} {b}?", result


def _distractors(answer: int, rng: random.Random, share_last_digit: bool) -> list[str]:
    """Four distinct wrong numbers; one ends in the answer's last digit when asked."""
    out: set[int] = set()
    if share_last_digit:
        out.add(answer + 10 * rng.choice([-3, -2, -1, 1, 2, 3]))
    while len(out) < 4:
        candidate = answer + rng.choice([-1, 1]) * rng.randint(1, max(9, abs(answer) // 3))
        if candidate != answer and (share_last_digit or candidate % 10 != answer % 10):
            out.add(candidate)
    return [str(x) for x in out]


def arithmetic_task(op: str, n: int, *, digits: int = 2, seed: int = 0) -> dict:
    """One BigBench-style task (``{"examples": [...]}``) of ``n`` questions for ``op``."""
    rng = random.Random(f"{seed}:{op}:{digits}")
    examples = []
    for i in range(n):
        question, answer = _question(op, digits, rng)
        choices = [str(answer), *_distractors(answer, rng, i % 2 == 0), "banana", "house"]
        examples.append(
            {"input": question, "target_scores": {c: int(c == str(answer)) for c in choices}}
        )
    return {"name": f"{digits}_digit_{op}", "examples": examples}


def write_pool(directory: str | Path, n_per_op: int, *, digits: int = 2, seed: int = 0) -> Path:
    """Write ``{digits}_digit_{op}/task.json`` for the four operations; return the folder."""
    directory = Path(directory)
    for op in ("addition", "subtraction", "multiplication", "division"):
        task = arithmetic_task(op, n_per_op, digits=digits, seed=seed)
        path = directory / task["name"] / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(task))
    return directory
