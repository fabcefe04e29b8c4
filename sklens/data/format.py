"""Token layout of an example: ``[instruction][soft-prompt slots][completion]``, padded on the right.

With a chat template the instruction is the user turn and the completion the assistant turn. The
slots sit *after* the template's assistant header and right before the completion text::

    <|im_start|>user\\n{instruction}<|im_end|>\\n<|im_start|>assistant\\n[slots]{completion}

so under causal attention they read the whole user turn and the turn markers, nothing
example-specific comes after them, and the first completion token is predicted from the last slot,
as in the paper's ``Pr(y_j | x, p_1..p_l, y_<j)``. The assistant's end-of-turn token is not a target:
the loss and loss metrics are over the completion text only. Without a template the layout is
``[BOS if the model prepends one][instruction][slots][completion]``.

Each row's slots start at its own position. Padding is on the right and an explicit attention mask
is passed, so a causal model computes exactly the same thing for a row whatever batch it is in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from sklens.data.example import Example
from sklens.models.protocol import Model


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example: everything before the slots, and the completion."""

    prefix: tuple[int, ...]
    completion: tuple[int, ...]


@dataclass
class Batch:
    """A right-padded batch with per-row slot positions.

    ``tokens[b, slot_start[b] : slot_start[b] + n_slots]`` are placeholders the soft prompt
    overwrites; the completion follows at ``completion_start[b]`` for ``completion_len[b]`` tokens.
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    slot_start: Int[Tensor, " batch"]
    completion_len: Int[Tensor, " batch"]
    n_slots: int
    indices: list[int]

    @property
    def completion_start(self) -> Int[Tensor, " batch"]:
        return self.slot_start + self.n_slots

    @property
    def slot_positions(self) -> Int[Tensor, "batch slot"]:
        offsets = torch.arange(self.n_slots, device=self.slot_start.device)
        return self.slot_start[:, None] + offsets

    @property
    def read_positions(self) -> Int[Tensor, "batch n_read"]:
        """Where scans read activations: the slots, or with no prompt the instruction's last token."""
        if self.n_slots > 0:
            return self.slot_positions
        return (self.slot_start - 1)[:, None]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.tokens.to(device),
            self.attention_mask.to(device),
            self.slot_start.to(device),
            self.completion_len.to(device),
            self.n_slots,
            self.indices,
        )


def uses_chat_template(tokenizer: Any, chat_template: bool | None) -> bool:
    """Resolve ``chat_template=None`` (auto) to whether the tokenizer has a template."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat_template and not has:
        raise ValueError(
            "chat_template=True but the tokenizer has no chat template; pass chat_template=None "
            "(auto) or False to use the plain layout [BOS][instruction][slots][completion]"
        )
    return has if chat_template is None else bool(chat_template)


def encode(
    model: Model,
    examples: Sequence[Example],
    n_slots: int,
    *,
    chat_template: bool | None = None,
) -> list[Encoded]:
    """Tokenize examples into the slot layout and check each fits the model's context."""
    if len(examples) == 0:
        raise ValueError("no examples were given: pass a non-empty list of sklens.Example")
    tokenizer = model.tokenizer
    templated = uses_chat_template(tokenizer, chat_template)
    bos = tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    encoded = []
    for i, example in enumerate(examples):
        if not isinstance(example, Example):
            raise TypeError(f"example {i} is a {type(example).__name__}, not a sklens.Example")
        if templated:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": example.instruction}],
                tokenize=False,
                add_generation_prompt=True,
            )
            prefix = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prefix = tokenizer(example.instruction, add_special_tokens=False)["input_ids"]
            if bos is not None:
                prefix = [bos, *prefix]
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if not completion:
            raise ValueError(f"example {i} has an empty completion; every example needs a target")
        if not prefix and n_slots == 0:
            raise ValueError(
                f"example {i} has nothing before its completion (empty instruction, no BOS, no "
                "soft prompt): the first completion token would have no position to predict it"
            )
        total = len(prefix) + n_slots + len(completion)
        if total > model.cfg.n_ctx:
            start = " ".join(example.instruction.split())[:40]
            raise ValueError(
                f"example {i} ({start!r}…) is {total} tokens ({len(prefix)} instruction + "
                f"{n_slots} soft-prompt + {len(completion)} completion), longer than the model's "
                f"context n_ctx={model.cfg.n_ctx}; shorten it or use fewer soft-prompt tokens"
            )
        encoded.append(Encoded(tuple(prefix), tuple(completion)))
    return encoded


def collate(
    encoded: Sequence[Encoded],
    indices: Sequence[int],
    n_slots: int,
    pad_id: int,
    *,
    with_completion: bool = True,
) -> Batch:
    """Right-pad encoded examples into a batch.

    With ``with_completion=False`` each row stops at the end of its slots: enough for activations
    at the slots, which under causal attention do not depend on anything later.
    """
    rows = []
    for enc in encoded:
        row = [*enc.prefix, *([pad_id] * n_slots)]
        if with_completion:
            row.extend(enc.completion)
        rows.append(row)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, : len(row)] = 1
    return Batch(
        tokens=tokens,
        attention_mask=mask,
        slot_start=torch.tensor([len(e.prefix) for e in encoded], dtype=torch.long),
        completion_len=torch.tensor(
            [len(e.completion) if with_completion else 0 for e in encoded], dtype=torch.long
        ),
        n_slots=n_slots,
        indices=list(indices),
    )


def pad_id(tokenizer: Any) -> int:
    """The id used for padding and slot placeholders (its value never reaches the model)."""
    pid = getattr(tokenizer, "pad_token_id", None)
    return 0 if pid is None else int(pid)


def iter_batches(
    model: Model,
    encoded: Sequence[Encoded],
    n_slots: int,
    batch_size: int,
    *,
    order: Sequence[int] | None = None,
    with_completion: bool = True,
) -> Iterator[Batch]:
    """Batches over ``encoded`` in ``order`` (default: as given), on the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(encoded))) if order is None else list(order)
    pid = pad_id(model.tokenizer)
    device = model.cfg.device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate(
            [encoded[i] for i in idx], idx, n_slots, pid, with_completion=with_completion
        )
        yield batch.to(device)


def split_batch(
    model: Model, encoded: Sequence[Encoded], n_slots: int, order: Sequence[int]
) -> tuple[Int[Tensor, "batch prefix"], Int[Tensor, "batch prefix"], Batch]:
    """The examples ``order`` split at their slots, for a pass that reuses the prefix's keys/values.

    Returns the prefixes (right-padded) with their attention mask, and the slots plus completions
    as a ``Batch`` whose slots start at 0. TransformerLens masks the padding between the two in
    the joined key/value cache and takes rotary positions from the joined masks, so each real
    token keeps the position it has in the unsplit layout.
    """
    rows = [encoded[i] for i in order]
    pid = pad_id(model.tokenizer)
    prefix = collate([Encoded(e.prefix, ()) for e in rows], order, 0, pid, with_completion=False)
    rest = collate([Encoded((), e.completion) for e in rows], order, n_slots, pid)
    device = model.cfg.device
    return prefix.tokens.to(device), prefix.attention_mask.to(device), rest.to(device)
