"""Skill-Mix style question–answer pairs (Yu et al. 2023; the paper's RQ1).

``load_skillmix`` reads JSONL with ``question``, ``answer`` and ``skill`` per line.
``generate_skillmix`` writes pairs that need one of two skills, spatial reasoning or creating a
metaphor, from several phrasings per skill and a vocabulary written for sklens, so a neuron cannot
separate the skills by one template word ("where", "metaphor", ...).
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
    "ball",
    "box",
    "lamp",
    "cup",
    "book",
    "chair",
    "vase",
    "key",
    "coin",
    "hat",
    "plate",
    "bottle",
    "candle",
    "clock",
    "shoe",
    "basket",
    "pencil",
    "phone",
    "jar",
    "pillow",
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


def _spatial(rng: random.Random) -> tuple[str, str]:
    a, b, c = rng.sample(OBJECTS, 3)
    s = rng.choice(SURFACES)
    rel, opposite = rng.choice(RELATIONS)
    form = rng.randrange(4)
    if form == 0:
        return (
            f"Where is the {a} if it is {rel} the {b} and the {b} is on the {s}?",
            f"The {a} is {rel} the {b}, so it is also near the {s}.",
        )
    if form == 1:
        return (
            f"The {a} is {rel} the {b}, and the {b} is {rel} the {c}. How do the {a} and the "
            f"{c} relate?",
            f"The {a} is {rel} the {c}, since the {b} lies between them.",
        )
    if form == 2:
        return (
            f"If the {b} is {rel} the {a}, what is the {a} relative to the {b}?",
            f"The {a} is {opposite} the {b}.",
        )
    return (
        f"You put the {a} inside the {b} and then set the {b} on the {s}. What sits on the {s}?",
        f"The {b} is on the {s}, with the {a} inside it.",
    )


def _metaphor(rng: random.Random) -> tuple[str, str]:
    concept = rng.choice(CONCEPTS)
    vehicle, phrase = rng.choice(VEHICLES)
    form = rng.randrange(4)
    subject = concept[0].upper() + concept[1:]
    if form == 0:
        return (
            f"Create a metaphor for {concept} built on {vehicle}.",
            f"{subject} is {vehicle} that {phrase}.",
        )
    if form == 1:
        return (
            f"Describe {concept} figuratively, as if it were {vehicle}.",
            f"{subject} is {vehicle}: it {phrase}.",
        )
    if form == 2:
        return (
            f"Write one poetic sentence that links {concept} and {vehicle}.",
            f"{subject} is {vehicle} that {phrase}.",
        )
    return (
        f"Compare {concept} to {vehicle} without using 'like' or 'as'.",
        f"{subject} is {vehicle}, and it {phrase}.",
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
