"""HANS (McCoy et al. 2019; the paper's RQ2): the official file format and a generator.

``load_hans`` reads the official tab-separated ``heuristics_evaluation_set.txt`` from a user's path.
``generate_hans`` writes HANS-style pairs from templates and a vocabulary written for sklens,
covering the three heuristics, each with entailed and non-entailed subcases. The templates follow
McCoy et al.'s (``templates.py`` in tommccoy1/hans), so each pair belongs to one heuristic only:

- **lexical overlap**: every hypothesis word is a premise word, but the hypothesis is *not* a
  contiguous run of the premise ("The N1 near the N2 V the N3." → "The N2 V the N1.");
- **subsequence**: the hypothesis is a contiguous run of the premise that is not a constituent
  ("The N1 near the N2 I." → "The N2 I.");
- **constituent**: the hypothesis is a complete clause of the premise, the one after a
  subordinator, an adverb or "or", or the first of two disjuncts ("If the N1 I1, the N2 I2." →
  "The N1 I1.").

Every example's meta carries ``heuristic``, ``subcase``, ``label`` and ``template``; the
completion is ``"entailment"`` or ``"non-entailment"``, and the two labels are the example's
``choices`` with the completion its ``answer``, so that accuracy can be measured (a causal
check scores both).
"""

from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

from sklens.data.example import Example

HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
LABELS = ("entailment", "non-entailment")
_FIELDS = ("gold_label", "sentence1", "sentence2", "heuristic", "subcase")


def nli_instruction(premise: str, hypothesis: str) -> str:
    return (
        f"Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise entail the hypothesis? Answer entailment or non-entailment."
    )


def load_hans(path: str | os.PathLike) -> list[Example]:
    """Examples from the official HANS TSV (``heuristics_evaluation_set.txt`` or train set).

    HANS is plain tab-separated text without quoting, so each line is one example; a line with
    fewer or more fields than the header (a truncated download, a stray tab) is a ``ValueError``
    that names the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x}); the official "
            "HANS file is UTF-8: download it again or save the file as UTF-8"
        ) from err
    with io.StringIO(text, newline="") as fh:
        lines = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(lines, [])
        missing = [f for f in _FIELDS if f not in header]
        if missing:
            raise ValueError(f"{path}: not a HANS file, the header lacks {missing}")
        out = []
        for lineno, fields in enumerate(lines, start=2):
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}:{lineno}: {len(fields)} tab-separated fields, the header has "
                    f"{len(header)}; the line is truncated or has a stray tab"
                )
            row = dict(zip(header, fields, strict=True))
            empty = [f for f in _FIELDS if not row[f]]
            if empty:
                raise ValueError(f"{path}:{lineno}: empty field(s) {empty}")
            label = row["gold_label"]
            if label not in LABELS:
                raise ValueError(
                    f"{path}:{lineno}: gold_label {label!r} is not entailment/non-entailment"
                )
            meta = {
                "heuristic": row["heuristic"],
                "subcase": row["subcase"],
                "label": label,
                "template": row.get("template"),
                "pair_id": row.get("pairID"),
                "choices": list(LABELS),
                "answer": label,
            }
            out.append(Example(nli_instruction(row["sentence1"], row["sentence2"]), label, meta))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


NOUNS = (
    "doctor",
    "lawyer",
    "artist",
    "banker",
    "senator",
    "student",
    "professor",
    "athlete",
    "judge",
    "tourist",
    "secretary",
    "manager",
    "author",
    "actor",
    "president",
    "scientist",
    "dancer",
    "farmer",
    "pilot",
    "chef",
)
# Past tense = past participle for every one, so the passive premise "was called by" and the
# active hypothesis "called" share the word, as in HANS's passive_verbs (which leave out "saw").
TRANSITIVE = (
    "called",
    "helped",
    "thanked",
    "admired",
    "recommended",
    "supported",
    "contacted",
    "avoided",
    "encouraged",
    "introduced",
    "advised",
    "recognized",
    "mentioned",
)
INTRANSITIVE = (
    "slept",
    "danced",
    "ran",
    "waited",
    "laughed",
    "shouted",
    "arrived",
    "resigned",
    "smiled",
    "left",
)
PREPOSITIONS = ("near", "behind", "beside", "next to", "in front of")
BELIEF = ("believed", "knew", "forgot", "heard")
SUBORDINATE_NE = ("If", "Unless", "Whether or not")
SUBORDINATE_E = ("Since", "Because", "Now that")
ADVERBS_E = ("Certainly", "Clearly", "Obviously")


@dataclass(frozen=True)
class _Words:
    """The vocabulary of one round of pairs, named as in the templates: three distinct nouns
    (N1-N3), two transitive verbs (V, W), two intransitive ones (I1, I2), a preposition (P) and a
    belief verb (B)."""

    n1: str
    n2: str
    n3: str
    v: str
    w: str
    i1: str
    i2: str
    p: str
    b: str

    @classmethod
    def draw(cls, rng: random.Random) -> _Words:
        """Fresh words from ``rng``."""
        n1, n2, n3 = rng.sample(NOUNS, 3)
        v, w = rng.sample(TRANSITIVE, 2)
        i1, i2 = rng.sample(INTRANSITIVE, 2)
        return cls(n1, n2, n3, v, w, i1, i2, rng.choice(PREPOSITIONS), rng.choice(BELIEF))


_Pairs = dict[tuple[str, str], tuple[str, str, str]]


def _pairs(rng: random.Random) -> _Pairs:
    """One (premise, hypothesis, template) per (heuristic, subcase), with fresh vocabulary.

    Where HANS has several templates for a subcase (the temp numbers of McCoy et al.'s
    ``templates.py``), one is drawn at random.
    """
    words = _Words.draw(rng)  # then the templates' draws, in this order: a seed fixes the pairs
    return _lexical_overlap(rng, words) | _subsequence(words) | _constituent(rng, words)


def _lexical_overlap(rng: random.Random, words: _Words) -> _Pairs:
    """The lexical-overlap pairs: every hypothesis word is a premise word."""
    n1, n2, n3, v, p = words.n1, words.n2, words.n3, words.v, words.p
    # preposition on the subject (HANS temp2-4); the contiguous "N2 V N3" would be the
    # subsequence heuristic, not this one
    prep_hypothesis = rng.choice(
        (
            (f"The {n2} {v} the {n1}.", "N1 P N2 V N3 -> N2 V N1"),
            (f"The {n3} {v} the {n1}.", "N1 P N2 V N3 -> N3 V N1"),
            (f"The {n3} {v} the {n2}.", "N1 P N2 V N3 -> N3 V N2"),
        )
    )
    # conjunction (HANS temp32-33): one conjunct with the shared verb, "N1 V N3"; the contiguous
    # "N2 V N3" of the first premise would be the subsequence heuristic
    conjunction = rng.choice(
        (
            (f"The {n1} and the {n2} {v} the {n3}.", "N1 and N2 V N3 -> N1 V N3"),
            (f"The {n1} {v} the {n2} and the {n3}.", "N1 V N2 and N3 -> N1 V N3"),
        )
    )
    return {
        ("lexical_overlap", "ln_subject/object_swap"): (
            f"The {n1} {v} the {n2}.",
            f"The {n2} {v} the {n1}.",
            "N1 V N2 -> N2 V N1",
        ),
        ("lexical_overlap", "ln_preposition"): (
            f"The {n1} {p} the {n2} {v} the {n3}.",
            *prep_hypothesis,
        ),
        ("lexical_overlap", "le_passive"): (
            f"The {n1} was {v} by the {n2}.",
            f"The {n2} {v} the {n1}.",
            "N1 was V-ed by N2 -> N2 V N1",
        ),
        ("lexical_overlap", "le_conjunction"): (
            conjunction[0],
            f"The {n1} {v} the {n3}.",
            conjunction[1],
        ),
    }


def _subsequence(words: _Words) -> _Pairs:
    """The subsequence pairs: the hypothesis is a contiguous run of the premise."""
    n1, n2, n3, v, w = words.n1, words.n2, words.n3, words.v, words.w
    i1, p, b = words.i1, words.p, words.b
    return {
        ("subsequence", "sn_NP/S"): (
            f"The {n1} {b} the {n2} {i1}.",
            f"The {n1} {b} the {n2}.",
            "N1 B N2 I -> N1 B N2",
        ),
        ("subsequence", "sn_PP_on_subject"): (
            f"The {n1} {p} the {n2} {i1}.",
            f"The {n2} {i1}.",
            "N1 P N2 I -> N2 I",
        ),
        ("subsequence", "se_PP_on_obj"): (
            f"The {n1} {v} the {n2} {p} the {n3}.",
            f"The {n1} {v} the {n2}.",
            "N1 V N2 P N3 -> N1 V N2",
        ),
        ("subsequence", "se_relative_clause_on_obj"): (
            f"The {n1} {v} the {n2} who {w} the {n3}.",
            f"The {n1} {v} the {n2}.",
            "N1 V N2 who V N3 -> N1 V N2",
        ),
    }


def _constituent(rng: random.Random, words: _Words) -> _Pairs:
    """The constituent pairs: the hypothesis is a complete clause of the premise."""
    n1, n2, i1, i2 = words.n1, words.n2, words.i1, words.i2
    # disjunction: either disjunct is a clause the premise does not assert
    disjunct = rng.choice(
        (
            (f"The {n1} {i1}.", "N1 I1, or N2 I2 -> N1 I1"),
            (f"The {n2} {i2}.", "N1 I1, or N2 I2 -> N2 I2"),
        )
    )
    if_, since = rng.choice(SUBORDINATE_NE), rng.choice(SUBORDINATE_E)
    adverb = rng.choice(ADVERBS_E)
    return {
        ("constituent", "cn_embedded_under_if"): (
            f"{if_} the {n1} {i1}, the {n2} {i2}.",
            f"The {n1} {i1}.",
            "If N1 I1, N2 I2 -> N1 I1",
        ),
        ("constituent", "cn_disjunction"): (
            f"The {n1} {i1}, or the {n2} {i2}.",
            *disjunct,
        ),
        ("constituent", "ce_embedded_under_since"): (
            f"{since} the {n1} {i1}, the {n2} {i2}.",
            f"The {n1} {i1}.",
            "Since N1 I1, N2 I2 -> N1 I1",
        ),
        ("constituent", "ce_adverb"): (
            f"{adverb} the {n1} {i1}.",
            f"The {n1} {i1}.",
            "Adv N1 I -> N1 I",
        ),
    }


def generate_hans(n: int = 600, *, seed: int = 0) -> list[Example]:
    """``n`` HANS-style pairs, balanced over the 12 subcases (3 heuristics × entailed or not)
    in every round of 12, no pair twice; the first ``m`` of ``n`` are ``generate_hans(m)``."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    out: list[Example] = []
    seen: set[str] = set()
    while len(out) < n:  # one shuffled round of the 12 subcases at a time, so
        block = []  # ``generate_hans(m)`` is the first m of ``generate_hans(n)``
        for (heuristic, subcase), pair in _pairs(rng).items():
            for _ in range(1000):  # a pair the templates made before: draw the subcase again
                if nli_instruction(*pair[:2]) not in seen:
                    break
                pair = _pairs(rng)[heuristic, subcase]
            else:
                raise ValueError(f"cannot generate {n} distinct HANS pairs; ask for fewer")
            premise, hypothesis, template = pair
            seen.add(nli_instruction(premise, hypothesis))
            label = LABELS[0] if subcase[1] == "e" else LABELS[1]
            meta = {
                "heuristic": heuristic,
                "subcase": subcase,
                "label": label,
                "template": template,
                "choices": list(LABELS),
                "answer": label,
            }
            block.append(Example(nli_instruction(premise, hypothesis), label, meta))
        rng.shuffle(block)
        out.extend(block)
    return out[:n]
