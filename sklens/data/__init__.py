"""Examples, their token layout, and the paper's three task families."""

from sklens.data.arithmetic import SUBTASKS, arithmetic_task, write_arithmetic
from sklens.data.bigbench import (
    bigbench_arithmetic,
    load_bigbench,
    read_bigbench_records,
    task_examples,
)
from sklens.data.example import Example, data_hash
from sklens.data.format import Batch, Encoded, collate, encode, iter_batches
from sklens.data.hans import generate_hans, load_hans
from sklens.data.jsonl import load_jsonl
from sklens.data.skillmix import generate_skillmix, load_skillmix
from sklens.data.split import train_val_split

__all__ = [
    "SUBTASKS",
    "Batch",
    "Encoded",
    "Example",
    "arithmetic_task",
    "bigbench_arithmetic",
    "collate",
    "data_hash",
    "encode",
    "generate_hans",
    "generate_skillmix",
    "iter_batches",
    "load_bigbench",
    "load_hans",
    "load_jsonl",
    "load_skillmix",
    "read_bigbench_records",
    "task_examples",
    "train_val_split",
    "write_arithmetic",
]
