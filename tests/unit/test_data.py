"""Loaders shared by every task: JSONL files that name the bad line, splits."""

from __future__ import annotations

import pytest

from sklens.data.jsonl import load_jsonl
from sklens.data.skillmix import generate_skillmix, load_skillmix
from sklens.data.split import train_val_split


def test_skillmix_and_jsonl_loaders_name_the_bad_line(tmp_path):
    path = tmp_path / "skills.jsonl"
    path.write_text(
        '{"question": "Where is the cup?", "answer": "On the table.", "skill": "spatial"}\n\n'
        '{"question": "Q", "answer": "A"}\n'
    )
    with pytest.raises(ValueError, match=r"skills.jsonl:3: missing field 'skill'"):
        load_skillmix(path)
    path.write_text(
        '{"question": "Where is the cup?", "answer": "On the table.", "skill": "spatial", "id": 4}\n'
    )
    (e,) = load_skillmix(path)
    assert e.meta == {"skill": "spatial", "id": 4} and e.completion == "On the table."
    task = tmp_path / "task.jsonl"
    task.write_text('{"instruction": "a", "completion": "b", "group": 1}\n{"instruction": "a"\n')
    with pytest.raises(ValueError, match=r"task.jsonl:2: not valid JSON"):
        load_jsonl(task)
    task.write_text('{"instruction": "a", "completion": 3}\n')
    with pytest.raises(
        ValueError, match=r"task.jsonl:1: field 'completion' must be a non-empty string"
    ):
        load_jsonl(task)
    task.write_text('["a", "b"]\n')
    with pytest.raises(ValueError, match=r"task.jsonl:1: expected a JSON object"):
        load_jsonl(task)
    task.write_text('{"instruction": "a", "completion": "b", "group": 1}\n')
    assert load_jsonl(task)[0].meta == {"group": 1}


def test_split_is_deterministic_and_disjoint():
    examples = generate_skillmix(50, seed=0)
    train, val = train_val_split(examples, 0.2, seed=3)
    again = train_val_split(examples, 0.2, seed=3)
    assert (train, val) == again and len(val) == 10 and len(train) == 40
    assert not {e.instruction for e in train} & {e.instruction for e in val}
    with pytest.raises(ValueError, match="leaves no train"):
        train_val_split(examples, 50)
