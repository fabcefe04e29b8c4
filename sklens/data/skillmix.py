"""Skill-Mix style question–answer pairs (Yu et al. 2023; the paper's RQ1).

``load_skillmix`` reads JSONL with ``question``, ``answer`` and ``skill`` per line.
``generate_skillmix`` writes pairs that need one of two skills, spatial reasoning or creating a
metaphor, from a vocabulary written for sklens. Only the content may tell the skills apart, or an
RQ1 scan finds question-mark or length neurons instead of skill neurons. So each skill has eight
phrasings, four questions and the same four as instructions, and phrasing *i* of one skill has
the punctuation of phrasing *i* of the other (commas, sentences, final "?" or ".") and about its
length in characters, words and tokens. No single template word ("where", "metaphor") is in every
item of one skill, and ``tests/unit/test_data.py`` checks that a classifier on surface features
alone (length, final token, "?", punctuation counts) stays at chance.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from sklens.data.example import Example
from sklens.data.jsonl import read_objects, require_strings

SKILLS = ("spatial", "metaphor")


def load_skillmix(path: str | os.PathLike) -> list[Example]:
    """Examples from JSONL lines ``{"question", "answer", "skill", ...}``."""
    out = []
    for lineno, obj in read_objects(path):
        require_strings(Path(path), lineno, obj, ("question", "answer", "skill"))
        meta = {k: v for k, v in obj.items() if k not in ("question", "answer")}
        out.append(Example(obj["question"], obj["answer"], meta))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


OBJECTS = (
    "pillow",
    "umbrella",
    "key",
    "jar",
    "clock",
    "radio",
    "cup",
    "vase",
    "phone",
    "plate",
    "book",
    "lamp",
    "globe",
    "kite",
    "glove",
    "comb",
    "camera",
    "laptop",
    "kettle",
    "notebook",
    "envelope",
    "trophy",
    "violin",
    "candle",
)
SURFACES = ("table", "shelf", "desk", "bed", "floor", "counter", "windowsill", "bench")
RELATIONS = (("to the left of", "to the right of"), ("above", "below"), ("in front of", "behind"))
CONCEPTS = (
    "time",
    "hope",
    "anger",
    "memory",
    "love",
    "fear",
    "the city",
    "the ocean",
    "grief",
    "ambition",
    "a rumor",
    "childhood",
    "silence",
    "the internet",
    "winter",
    "knowledge",
    "friendship",
    "debt",
    "music",
    "old age",
    "a deadline",
    "jealousy",
    "the market",
    "sleep",
)
VEHICLES = (
    ("a river", "carries everything downstream"),
    ("a thief", "steals what we value"),
    ("a lighthouse", "guides us through the dark"),
    ("a wildfire", "spreads faster than we can act"),
    ("a garden", "grows what we tend"),
    ("a cage", "holds us without walls"),
    ("a storm", "passes but leaves its marks"),
    ("a mirror", "shows us what we bring to it"),
    ("a maze", "turns us around at every step"),
    ("an anchor", "keeps us from drifting"),
)
OCCASIONS = ("poem", "song", "speech", "short story", "wedding toast", "letter")
CONTAINERS = ("purse", "backpack", "bowl", "basket", "box", "bag", "cup", "jar")
SMALL_OBJECTS = ("key", "ring", "coin", "comb", "button", "marble", "pebble", "stamp")


def _phrasing(rng: random.Random, *forms: tuple[str, str, str]) -> tuple[str, str]:
    """One of a skill's phrasings and its answer, drawn evenly from ``forms``'s
    ``(question, instruction, answer)``: the same form asked and told, sharing its answer.

    Both skills draw through here, so their forms pair up one for one: phrasing ``2i`` is form
    ``i``'s question, ``2i + 1`` its instruction."""
    i = rng.randrange(2 * len(forms))
    question, instruction, answer = forms[i // 2]
    return (question, instruction)[i % 2], answer


def _spatial(rng: random.Random) -> tuple[str, str]:
    """One spatial-reasoning (question, answer); the forms pair up with ``_metaphor``'s."""
    a, b, c = rng.sample(OBJECTS, 3)
    s = rng.choice(SURFACES)
    rel, opposite = rng.choice(RELATIONS)
    small, box = rng.choice(SMALL_OBJECTS), rng.choice(CONTAINERS)
    on = f"The {a} is {rel} the {b}, so it is also near the {s}."
    chain = f"The {a} sits {rel} the {b}, which sits {rel} the {c}."
    chained = f"The {a} is {rel} the {c}, since the {b} lies between them."
    inverse = f"The {a} is {opposite} the {b}."
    inside = f"You put the {small} in a {box} and set the {box} on the {s}."
    inside_answer = f"The {box} is on the {s}, with the {small} inside it."
    return _phrasing(
        rng,
        (
            f"Where is the {a} if it sits {rel} the {b} and the {b} rests on the {s}?",
            f"Say where the {a} is if it sits {rel} the {b} and the {b} rests on the {s}.",
            on,
        ),
        (
            f"{chain} How do the {a} and the {c} relate?",
            f"{chain} Explain how the {a} and the {c} relate.",
            chained,
        ),
        (
            f"If the {b} sits {rel} the {a}, where does the {a} sit relative to the {b}?",
            f"If the {b} sits {rel} the {a}, say where the {a} sits relative to it.",
            inverse,
        ),
        (
            f"{inside} What rests on the {s}?",
            f"{inside} Name what rests on the {s}.",
            inside_answer,
        ),
    )


def _metaphor(rng: random.Random) -> tuple[str, str]:
    """One metaphor (question, answer); form i matches ``_spatial``'s form i in shape and length."""
    concept = rng.choice(CONCEPTS)
    vehicle, phrase = rng.choice(VEHICLES)
    occasion = rng.choice(OCCASIONS)
    subject = concept[0].upper() + concept[1:]
    that = f"{subject} is {vehicle} that {phrase}."
    colon = f"{subject} is {vehicle}: it {phrase}."
    and_ = f"{subject} is {vehicle}, and it {phrase}."
    friend = (
        f"A friend is writing a {occasion} about {concept}, and the image on her mind is {vehicle}."
    )
    own = f"Think of {concept} as {vehicle} in a {occasion} of your own."
    first_line = f"the first line of a new {occasion}"
    were = f"If {concept} were {vehicle},"
    return _phrasing(
        rng,
        (
            f"What metaphor would turn {concept} into {vehicle} in {first_line}?",
            f"Write {first_line} as a metaphor that turns {concept} into {vehicle}.",
            that,
        ),
        (f"{friend} What metaphor would fit?", f"{friend} Suggest the metaphor to use.", colon),
        (
            f"{were} how would you say so in the opening line of a {occasion} of yours?",
            f"{were} say so in the first line of a {occasion} that is about it.",
            that,
        ),
        (f"{own} What line comes to mind?", f"{own} Write the line that comes to mind.", and_),
    )


def generate_skillmix(n: int = 600, *, seed: int = 0) -> list[Example]:
    """``n`` distinct pairs, alternating skills; ``meta["skill"]`` is "spatial" or "metaphor"."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"cannot generate {n} distinct Skill-Mix items; ask for fewer")
        skill = SKILLS[len(out) % 2]
        question, answer = _spatial(rng) if skill == "spatial" else _metaphor(rng)
        if question in seen:
            continue
        seen.add(question)
        out.append(Example(question, answer, {"skill": skill}))
    return out
