"""Candidate explanations of a unit's activation, as one feature per example each.

``sklens.explain`` tests every candidate against a unit's held-out activations. Three families:

* ``meta`` — every field of ``Example.meta``: a categorical field (str, bool, or a number with two
  values) gives one-vs-rest indicators ("operation = division", tested by AUROC) and, with three
  or more values, the field as a whole (η²); a numeric field gives its values (Spearman);
* ``surface`` — properties of the instruction text, the only text the soft-prompt slots can see
  under causal attention: its length in tokens and words, how many numbers and digits it holds,
  whether it has a negative number, the longest number's digits, its last token;
* ``ngram`` — token n-grams of the instruction (the model's own tokens), as presence indicators,
  tested for enrichment among the most against the least activating examples.

Candidates that are the same feature on the given examples are merged into one (``merged``). A
feature is left out when it cannot be tested: a constant, a class with fewer than ``min_count``
examples, a field with more than ``max_levels`` values or with lists in it. What was left out, and
why, is returned beside the candidates, so a property that was never tested is not mistaken for
one that failed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from sklens.data.example import Example

Kind = Literal["meta", "surface", "ngram"]
Measure = Literal["auroc", "spearman", "eta_squared", "log_odds"]
KINDS: tuple[Kind, ...] = ("meta", "surface", "ngram")  # the order ties are broken in
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Hypothesis:
    """One candidate explanation: a feature of each example, and how to test it.

    ``values`` is bool for ``auroc`` and ``log_odds``, float for ``spearman`` and integer group
    codes for ``eta_squared``; ``known`` marks the examples where the feature is defined (a meta
    field that is None or missing on an example leaves that example out of its test).
    """

    name: str
    kind: Kind
    measure: Measure
    values: np.ndarray
    known: np.ndarray


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _binary(
    name: str, kind: Kind, positive: np.ndarray, known: np.ndarray, min_count: int
) -> Hypothesis | None:
    n1 = int(positive[known].sum())
    if min(n1, int(known.sum()) - n1) < min_count:
        return None
    return Hypothesis(name, kind, "auroc", positive & known, known)


def _levels(
    field: str, kind: Kind, labels: list[Any], known: np.ndarray, min_count: int
) -> list[Hypothesis]:
    """One-vs-rest indicators of a categorical feature (one when it has two values), and the
    grouping itself (η²) when it has three or more."""
    groups = sorted({labels[i] for i in np.flatnonzero(known)}, key=str)
    out = []
    for level in groups[1:] if len(groups) == 2 else groups:  # two indicators mirror: test one
        positive = np.array([known[i] and labels[i] == level for i in range(len(labels))])
        hypothesis = _binary(f"{field} = {level}", kind, positive, known, min_count)
        if hypothesis is not None:
            out.append(hypothesis)
    if len(groups) >= 3:
        codes = np.array([groups.index(x) if k else -1 for x, k in zip(labels, known, strict=True)])
        sizes = np.bincount(codes[known], minlength=len(groups))
        if (sizes >= 2).sum() >= 2:
            out.append(
                Hypothesis(f"{field} (η², {len(groups)} groups)", kind, "eta_squared", codes, known)
            )
    return out


def _feature(
    name: str, kind: Kind, values: list[Any], min_count: int, max_levels: int
) -> tuple[list[Hypothesis], str | None]:
    """The hypotheses of one feature, or the reason it cannot be tested."""
    known = np.array([v is not None for v in values])
    present = [v for v in values if v is not None]
    if any(isinstance(v, (list, tuple, dict, set)) for v in present):
        return [], "holds lists or dicts"
    distinct = set(present)
    if len(distinct) < 2:
        return [], "constant" if present else "never set"
    if all(_is_number(v) for v in present) and len(distinct) > 2:
        numbers = np.array([float(v) if v is not None else np.nan for v in values])
        return [Hypothesis(name, kind, "spearman", numbers, known)], None
    if len(distinct) > max_levels:
        return [], f"{len(distinct)} values (more than max_levels={max_levels})"
    found = _levels(name, kind, values, known, min_count)
    return found, None if found else f"no value has {min_count} examples on each side"


def meta_hypotheses(
    examples: Sequence[Example],
    fields: Sequence[str] | None = None,
    *,
    min_count: int = 5,
    max_levels: int = 12,
) -> tuple[list[Hypothesis], dict[str, str]]:
    """Hypotheses from the examples' meta fields (all of them unless ``fields`` names some), and
    ``{field: why it was left out}``."""
    names = (
        list(fields)
        if fields is not None
        else list(dict.fromkeys(k for e in examples for k in e.meta))
    )
    unknown = [f for f in names if not any(f in e.meta for e in examples)]
    if unknown:
        have = sorted({k for e in examples for k in e.meta})
        raise ValueError(f"no example has the meta field(s) {unknown}; the examples have {have}")
    out, skipped = [], {}
    for field in names:
        found, why = _feature(
            field, "meta", [e.meta.get(field) for e in examples], min_count, max_levels
        )
        out += found
        if why is not None:
            skipped[f"meta.{field}"] = why
    return out, skipped


def _surface_values(text: str, tokens: list[str]) -> dict[str, Any]:
    numbers = _NUMBER.findall(text)
    return {
        "n_tokens": len(tokens),
        "n_words": len(text.split()),
        "n_numbers": len(numbers),
        "n_digits": sum(c.isdigit() for c in text),
        "has_negative_number": any(x.startswith("-") for x in numbers),
        "longest_number_digits": max((len(x.lstrip("-")) for x in numbers), default=0),
        "last_token": tokens[-1] if tokens else "",
    }


def surface_hypotheses(
    examples: Sequence[Example],
    tokens: Sequence[list[str]],
    *,
    min_count: int = 5,
    max_levels: int = 12,
) -> tuple[list[Hypothesis], dict[str, str]]:
    """Hypotheses from the instruction's surface (``tokens``: each instruction's tokens)."""
    rows = [_surface_values(e.instruction, t) for e, t in zip(examples, tokens, strict=True)]
    out, skipped = [], {}
    for name in rows[0] if rows else ():
        found, why = _feature(name, "surface", [r[name] for r in rows], min_count, max_levels)
        out += found
        if why is not None:
            skipped[f"surface.{name}"] = why
    return out, skipped


def ngram_hypotheses(
    tokens: Sequence[list[str]], orders: Sequence[int] = (1, 2), *, min_count: int = 5
) -> list[Hypothesis]:
    """Presence of each token n-gram that is in at least ``min_count`` instructions and absent
    from at least ``min_count``."""
    n = len(tokens)
    out = []
    for order in orders:
        seen: dict[tuple[str, ...], set[int]] = {}
        for i, toks in enumerate(tokens):
            for j in range(len(toks) - order + 1):
                seen.setdefault(tuple(toks[j : j + order]), set()).add(i)
        for gram, where in sorted(seen.items()):
            if min_count <= len(where) <= n - min_count:
                present = np.zeros(n, dtype=bool)
                present[list(where)] = True
                out.append(
                    Hypothesis(
                        f"ngram {''.join(gram)!r}",
                        "ngram",
                        "log_odds",
                        present,
                        np.ones(n, dtype=bool),
                    )
                )
    return out


def merged(hypotheses: Sequence[Hypothesis]) -> list[Hypothesis]:
    """One hypothesis per distinct feature: those that are the same feature on these examples
    (``subtask = 5_digit_division`` and ``operation = division``; two n-grams that always occur
    together; a binary property and the negation of another, ``b ≠ y``) become one, named
    ``a ≡ b``, of the first one's kind. The same test is then not
    counted twice by the multiple-testing correction, and the table says they cannot be told
    apart on these examples."""
    groups: dict[tuple[str, bytes, bytes], list[str]] = {}
    first: dict[tuple[str, bytes, bytes], Hypothesis] = {}
    for h in hypotheses:
        key = (h.measure, np.asarray(h.values).tobytes(), h.known.tobytes())
        name = h.name
        if h.measure == "auroc":  # x and not-x are one test (AUROC 1 − a, the same p)
            flipped = (h.measure, (~h.values & h.known).tobytes(), h.known.tobytes())
            if flipped in groups:
                key = flipped
                name = h.name.replace(" = ", " ≠ ", 1) if " = " in h.name else f"not {h.name}"
        groups.setdefault(key, []).append(name)
        first.setdefault(key, h)
    return [
        first[key] if len(names) == 1 else replace(first[key], name=" ≡ ".join(names))
        for key, names in groups.items()
    ]


def instruction_tokens(tokenizer: Any, examples: Sequence[Example]) -> list[list[str]]:
    """Each instruction's tokens as text (the model's tokenizer, no special tokens)."""
    ids = tokenizer([e.instruction for e in examples], add_special_tokens=False)["input_ids"]
    return [[tokenizer.decode([t]) for t in row] for row in ids]


def candidate_hypotheses(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    fields: Sequence[str] | None = None,
    surface: bool = True,
    ngrams: Sequence[int] = (1, 2),
    min_count: int = 5,
    max_levels: int = 12,
) -> tuple[list[Hypothesis], dict[str, str]]:
    """Every candidate of the three families, and what was left out (and why)."""
    examples = list(examples)
    out, skipped = meta_hypotheses(examples, fields, min_count=min_count, max_levels=max_levels)
    if surface or ngrams:
        tokens = instruction_tokens(tokenizer, examples)
        if surface:
            found, why = surface_hypotheses(
                examples, tokens, min_count=min_count, max_levels=max_levels
            )
            out += found
            skipped |= why
        out += ngram_hypotheses(tokens, ngrams, min_count=min_count)
    return merged(out), skipped
