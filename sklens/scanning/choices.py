"""Scoring examples with the prompt: the completion's loss and, for multiple-choice examples,
every choice as a completion.

An example is multiple choice when ``meta["choices"]`` lists the choices and ``meta["answer"]``
is one of them. Per example this gives (the last three NaN unless every example is multiple choice)

* ``mean_loss``: the mean cross-entropy of the (correct) completion, the paper's loss, and
  ``total_logprob``, its log-probability (named as on ``CompletionLogprobs``, so every metric
  reads either);
* ``choice_confidence``: ``p(answer) / Σ_c p(c)``, the probability of the correct choice
  renormalised over the choices. The whole-completion probability (``metrics.confidence``) is
  confounded with length: a ten-digit answer has a far smaller probability than "1" whatever the
  model knows; renormalising over the same question's choices removes most of that;
* ``correct``: the correct choice has the highest *total* log-probability — which favours short
  choices ("banana", "house", short quotients) over multi-token numbers;
* ``correct_per_token``: the correct choice has the highest *mean per-token* log-probability
  (length-normalised accuracy);
* ``chosen``: the index in ``meta["choices"]`` of the choice with the highest total
  log-probability (the first on a tie), so an edit that changes the model's pick shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from sklens.data.example import Example
from sklens.data.format import encode
from sklens.models import _compat
from sklens.models.protocol import Model
from sklens.prompt.forward import batched_pass, shared_prefix_pass, slot_count, with_prompt
from sklens.prompt.soft_prompt import SoftPrompt


def is_multiple_choice(examples: Sequence[Example]) -> bool:
    """Every example has a ``choices`` list and an ``answer``."""
    return bool(examples) and all(
        isinstance(e.meta.get("choices"), list) and "answer" in e.meta for e in examples
    )


def expand_choices(examples: Sequence[Example]) -> tuple[list[Example], list[int], list[int]]:
    """One example per (example, choice): the rows, each row's example id, and each example's
    correct-choice row."""
    rows, owner, correct = [], [], []
    for i, e in enumerate(examples):
        choices = [str(c) for c in e.meta["choices"]]
        if str(e.meta["answer"]) not in choices:
            raise ValueError(f"example {i}: answer {e.meta['answer']!r} is not among its choices")
        for c in choices:
            if c == str(e.meta["answer"]):
                correct.append(len(rows))
            rows.append(Example(e.instruction, c, e.meta))
            owner.append(i)
    return rows, owner, correct


def shares_prefix(model: Model, n_slots: int, intervention: Any) -> bool:
    """Whether a question's choices can share one pass over the text before the slots
    (``forward.shared_prefix_pass``): a HookedTransformer, a soft prompt, and no edit before it."""
    at_slots = intervention is None or (
        isinstance(intervention.positions, str) and intervention.positions == "slots"
    )
    return n_slots >= 1 and not _compat.is_bridge(model) and at_slots


@dataclass
class ChoiceScores:
    """Per-example scores (see the module doc)."""

    mean_loss: Float[Tensor, " n"]
    total_logprob: Float[Tensor, " n"]
    choice_confidence: Float[Tensor, " n"]
    correct: Float[Tensor, " n"]
    correct_per_token: Float[Tensor, " n"]
    chosen: Float[Tensor, " n"]

    def subset(self, indices: Sequence[int]) -> ChoiceScores:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return ChoiceScores(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def score_examples(
    model: Model,
    prompt: SoftPrompt | None,
    examples: Sequence[Example],
    *,
    intervention: Any = None,
    batch_size: int = 8,
) -> ChoiceScores:
    """Score each example's completion — and every choice of multiple-choice examples — with
    ``prompt`` written in and an optional ``NeuronIntervention`` applied (its ``owners`` say
    which rows share an example, so resampling never takes a donor from the same question)."""
    examples = list(examples)
    choice = is_multiple_choice(examples)
    if choice:
        rows, owner, correct_rows = expand_choices(examples)
    else:
        rows, owner, correct_rows = examples, list(range(len(examples))), list(range(len(examples)))
    n_slots = slot_count(prompt)
    encoded = encode(model, rows, n_slots)
    total = torch.empty(len(rows), dtype=torch.float64)
    mean_loss = torch.empty(len(rows), dtype=torch.float64)
    parts = with_prompt(prompt)
    if intervention is not None:
        intervention.owners = owner
        parts.append(intervention)
    if choice and shares_prefix(model, n_slots, intervention):
        groups: list[list[int]] = [[] for _ in examples]
        for row, example in enumerate(owner):
            groups[example].append(row)
        passes = shared_prefix_pass(model, encoded, n_slots, parts, groups, batch_size=batch_size)
    elif getattr(intervention, "mode", None) == "resample" and len(examples) > 1:
        order, size = _mixed_batches(owner, batch_size)  # a donor from another question
        passes = batched_pass(model, encoded, n_slots, parts, order=order, batch_size=size,
                              logprobs=True)  # fmt: skip
    else:
        passes = batched_pass(model, encoded, n_slots, parts, batch_size=batch_size, logprobs=True)
    try:
        for batch, scores in passes:
            total[batch.indices] = scores.total_logprob.double().cpu()
            mean_loss[batch.indices] = scores.mean_loss.double().cpu()
    finally:
        if intervention is not None:
            intervention.owners = None
    owner_t = torch.tensor(owner)
    correct_t = torch.tensor(correct_rows)
    n = len(examples)

    def best(score: Tensor) -> Tensor:
        out = torch.full((n,), -torch.inf, dtype=torch.float64)
        return out.scatter_reduce(0, owner_t, score, reduce="amax")

    top = best(total)
    row_ids = torch.arange(len(rows))
    first, pick = (
        torch.full((n,), len(rows)).scatter_reduce(0, owner_t, ids, reduce="amin")
        for ids in (row_ids, torch.where(total >= top[owner_t], row_ids, len(rows)))
    )
    norm = torch.zeros(n, dtype=torch.float64).index_add_(0, owner_t, (total - top[owner_t]).exp())
    missing = torch.full((n,), torch.nan, dtype=torch.float64)
    return ChoiceScores(
        mean_loss=mean_loss[correct_t],
        total_logprob=total[correct_t],
        choice_confidence=(total[correct_t] - top).exp() / norm if choice else missing,
        correct=(total[correct_t] >= top).double() if choice else missing,
        correct_per_token=(-mean_loss[correct_t] >= best(-mean_loss)).double()
        if choice
        else missing,
        chosen=(pick - first).double() if choice else missing,
    )


def _mixed_batches(owner: Sequence[int], batch_size: int) -> tuple[list[int], int]:
    """An order of the rows and a batch size such that every batch holds rows of at least two
    examples, so resampling finds a donor from another question in each batch (the shared-prefix
    pass batches whole questions; a plain pass over a question's choices in a row would leave a
    batch, often the last, with one question only): every example's first choice, then every
    example's second, ...; with the largest batch size up to ``batch_size`` that mixes them all."""
    rank: dict[int, int] = {}
    keyed = []
    for row, example in enumerate(owner):
        keyed.append((rank.get(example, 0), row))
        rank[example] = rank.get(example, 0) + 1
    order = [row for _, row in sorted(keyed)]
    for size in range(max(2, batch_size), 1, -1):
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if all(len({owner[row] for row in batch}) > 1 for batch in batches):
            return order, size
    return order, batch_size  # none mixes (e.g. one question): the ablation says why
