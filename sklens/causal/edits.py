"""Edits that build counterfactual pairs: two examples that differ in one property.

Each edit takes an example and returns its twin with the property flipped and everything else
kept, or None when the example cannot be edited that way (a division has no last digit to make
decide; an example that already has the property has no twin that gains it). ``pairs`` applies
an edit to a list, keeps what it could edit, and says how many it left out and why.

Arithmetic (BigBench-shaped examples, ``sklens.data.bigbench``): only the distractors are
rewritten, digit by digit, so the question, the answer and the completion stay the same.

* ``last_digit_decides(example, True)`` — a multiplication whose answer shares its last digit
  with another choice: each such distractor's last digit is changed, so the operands' last
  digits pick the answer. ``False`` does the reverse: one distractor gets the answer's last digit.
* ``answer_only_negative(example, True)`` — a negative answer among other negative choices: their
  minus signs are removed. ``False``: the first positive distractor gets one.

HANS (``sklens.data.hans``): ``hans_twin`` — the same words, with the label flipped by the least
change its template allows: an active premise "The A v the B." becomes the passive "The A was v
by the B." (lexical overlap: subject/object swap ↔ passive), and a subordinator that does not
assert its clause becomes one that does ("If" ↔ "Since"; constituent: embedded under if ↔
since). Other templates have no such twin.

``NAMED`` holds the edits a study applies by name (``sklens run --counterfactual``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from sklens.data.bigbench import (
    arithmetic_instruction,
    arithmetic_meta,
    operand_last_digit,
    operands,
)
from sklens.data.example import Example
from sklens.data.hans import nli_instruction

Edit = Callable[[Example], "Example | None"]

_QUESTION_LINE = re.compile(r"Question: (.*)\n")
_NUMBER = re.compile(r"-?\d+")


def _arithmetic(example: Example) -> tuple[str, list[str], str] | None:
    """(question, choices, answer) of a BigBench-shaped example, or None."""
    match = _QUESTION_LINE.match(example.instruction)
    choices = example.meta.get("choices")
    if match is None or not isinstance(choices, list) or "answer" not in example.meta:
        return None
    return match.group(1), [str(c) for c in choices], str(example.meta["answer"])


def _rewritten(example: Example, question: str, choices: list[str], edit: str) -> Example | None:
    answer = str(example.meta["answer"])
    if len(set(choices)) < len(choices):  # a rewrite that made two choices equal is no twin
        return None
    if example.instruction != arithmetic_instruction(question, example.meta["choices"]):
        return None  # not the layout sklens writes: rewriting it could change more than choices
    meta = {**example.meta, **arithmetic_meta(question, choices, answer), "edit": edit}
    return replace(example, instruction=arithmetic_instruction(question, choices), meta=meta)


def last_digit_decides(example: Example, decide: bool = True) -> Example | None:
    """The twin of a multiplication in which the operands' last digits do (``decide``) or do not
    pick the answer among the choices; None if it already does (does not) or is no
    multiplication."""
    parsed = _arithmetic(example)
    if parsed is None:
        return None
    question, choices, answer = parsed
    ops = operands(question)
    if ops is None or ops[1] != "multiplication" or answer not in choices:
        return None
    digit = operand_last_digit(*ops)
    if int(answer[-1]) != digit:
        return None
    rivals = [
        i for i, c in enumerate(choices) if c != answer and _NUMBER.fullmatch(c) and len(c) > 1
    ]
    sharing = [i for i in rivals if int(choices[i][-1]) == digit]
    new = list(choices)
    if decide:
        if not sharing:
            return None
        for i in sharing:  # the nearest other digit that no other choice makes a duplicate of
            for step in (1, 9, 2, 8, 3, 7, 4, 6, 5):
                candidate = new[i][:-1] + str((digit + step) % 10)
                if candidate not in new:
                    new[i] = candidate
                    break
    else:
        if sharing or not rivals:
            return None
        new[rivals[0]] = new[rivals[0]][:-1] + str(digit)
    return _rewritten(example, question, new, f"last_digit_decides={decide}")


def answer_only_negative(example: Example, only: bool = True) -> Example | None:
    """The twin in which a negative answer is (``only``) or is not the only negative choice;
    None for a positive answer or one that already is (is not)."""
    parsed = _arithmetic(example)
    if parsed is None:
        return None
    question, choices, answer = parsed
    if not answer.startswith("-") or answer not in choices:
        return None
    numeric = [i for i, c in enumerate(choices) if c != answer and _NUMBER.fullmatch(c)]
    negative = [i for i in numeric if choices[i].startswith("-")]
    new = list(choices)
    if only:
        if not negative:
            return None
        for i in negative:
            new[i] = new[i][1:]
    else:
        if negative or not numeric:
            return None
        new[numeric[0]] = "-" + new[numeric[0]]
    return _rewritten(example, question, new, f"answer_only_negative={only}")


_ACTIVE = re.compile(r"^The (\w+) (\w+) the (\w+)\.$")
_PASSIVE = re.compile(r"^The (\w+) was (\w+) by the (\w+)\.$")
_SUBORDINATORS = {"If": "Since", "Unless": "Because", "Whether or not": "Now that"}
_SUBORDINATORS |= {v: k for k, v in _SUBORDINATORS.items()}
_SUBCASES = {
    "ln_subject/object_swap": "le_passive",
    "cn_embedded_under_if": "ce_embedded_under_since",
}
_SUBCASES |= {v: k for k, v in _SUBCASES.items()}
_NLI = re.compile(r"^Premise: (.*)\nHypothesis: (.*)\n")


def hans_twin(example: Example) -> Example | None:
    """The entailed (non-entailed) twin of a non-entailed (entailed) HANS example with the same
    words, for the subcases that have one (see the module doc); None for the others."""
    subcase = example.meta.get("subcase")
    match = _NLI.match(example.instruction)
    if subcase not in _SUBCASES or match is None:
        return None
    premise, hypothesis = match.groups()
    if subcase == "ln_subject/object_swap":
        parts = _ACTIVE.match(premise)
        new = parts and f"The {parts[1]} was {parts[2]} by the {parts[3]}."
    elif subcase == "le_passive":
        parts = _PASSIVE.match(premise)
        new = parts and f"The {parts[1]} {parts[2]} the {parts[3]}."
    else:
        lead = next((s for s in sorted(_SUBORDINATORS, key=len, reverse=True)
                     if premise.startswith(s + " ")), None)  # fmt: skip
        new = lead and _SUBORDINATORS[lead] + premise[len(lead) :]
    if not new:
        return None
    label = "entailment" if example.meta.get("label") == "non-entailment" else "non-entailment"
    meta = {**example.meta, "subcase": _SUBCASES[subcase], "label": label, "edit": "hans_twin"}
    if "template" in meta:
        meta["template"] = None  # the twin's template is the other subcase's
    instruction = nli_instruction(new, hypothesis)
    return Example(instruction, label if example.completion == example.meta.get("label")
                   else example.completion, meta)  # fmt: skip


def pairs(
    examples: Sequence[Example], edit: Edit, *, name: str | None = None
) -> tuple[list[tuple[Example, Example]], dict[str, Any]]:
    """``(example, edit(example))`` for every example the edit applies to, and a note of how
    many it was tried on and how many it left out. ``edit`` may be any function of one example
    (``functools.partial(last_digit_decides, decide=False)``, a user's rewrite)."""
    out = []
    for example in examples:
        twin = edit(example)
        if twin is None:
            continue
        if not isinstance(twin, Example):
            raise TypeError(f"the edit must return an Example or None, got {type(twin).__name__}")
        if twin == example:
            raise ValueError("the edit returned its input unchanged; return None to skip one")
        out.append((example, twin))
    label = name or getattr(edit, "__name__", None) or repr(edit)
    if not out:
        raise ValueError(
            f"the edit {label} applies to none of the {len(examples)} examples; choose examples "
            "that have the property to flip (see sklens.edits)"
        )
    return out, {"edit": label, "tried": len(examples), "paired": len(out)}


# The edits a study applies by name (``sklens run --counterfactual``), each making its property
# hold: the paper's two arithmetic shortcuts, and HANS's label-flipping twin.
NAMED: dict[str, Edit] = {
    "last_digit_decides": functools.partial(last_digit_decides, decide=True),
    "answer_only_negative": functools.partial(answer_only_negative, only=True),
    "hans_twin": hans_twin,
}
