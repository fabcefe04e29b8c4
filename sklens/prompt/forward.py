"""The batched pass, written once, and one forward pass over a batch doing only the work its
caller needs.

Every pass in sklens — scan, activations, scoring, causal edits, reference statistics, training
evaluation — is the same loop: encode → right-padded batches → the prompt written at
``hook_embed`` → hooks that read or edit → per-batch state. ``batched_pass`` is that loop; what
differs is the list of *parts* (``BatchPart``: the prompt's ``SlotWriter``, a reader, a
``NeuronIntervention``), each of which gives its hooks once and is told every batch before the
model runs (``start``). Nothing else pushes batch state into a hook.

Training and loss metrics need log-probabilities at the completion positions only. Unembedding
every position of a small model with a large vocabulary costs most of its time, so on a
HookedTransformer the pass stops before the unembedding (``stop_at_layer=n_layers``) and only the
positions that predict completion tokens go through ``ln_final`` and ``unembed``. A
TransformerBridge has no ``stop_at_layer`` (it silently returns full logits), so its logits are
sliced afterwards. Scans that need activations only stop the pass with an exception raised by a
hook after the last layer they read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from sklens.data.format import Batch, Encoded, collate, iter_batches, pad_id
from sklens.models import _compat
from sklens.models.layout import linear_layout_for
from sklens.models.protocol import Model
from sklens.prompt.soft_prompt import SoftPrompt

Hook = tuple[str, Callable[..., Any]]


@runtime_checkable
class BatchPart(Protocol):
    """One participant of a batched pass: its forward hooks, and the batch before each run."""

    def hooks(self) -> list[Hook]: ...

    def start(self, batch: Batch) -> None: ...


def with_prompt(prompt: SoftPrompt | None, *parts: BatchPart) -> list[BatchPart]:
    """The prompt's writer (where there is a prompt) before ``parts``: the parts of a pass that
    runs on a prompted model or a plain one alike."""
    return [prompt.writer(), *parts] if prompt is not None else list(parts)


def slot_count(prompt: SoftPrompt | None) -> int:
    """How many slots a pass writes: the prompt's, or none without one."""
    return prompt.n_slots if prompt is not None else 0


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed activation is read."""


def _raise_stop(activation: Tensor, hook: Any) -> None:
    raise _StopForward


def stop_hook(hook_name: str) -> tuple[str, Any]:
    """A forward hook that ends the pass at ``hook_name``; register it after the hooks that read."""
    return (hook_name, _raise_stop)


def run_until_stopped(model: Model, batch: Batch) -> None:
    """Run ``model`` on ``batch`` for its hooks' side effects, up to a ``stop_hook``."""
    try:
        model(batch.tokens, attention_mask=batch.attention_mask)
    except _StopForward:
        return


@contextmanager
def attached(
    model: Model, parts: Sequence[BatchPart], *, stop_after: str | None = None
) -> Iterator[Callable[[Batch], None]]:
    """Attach every part's hooks (and a stop after ``stop_after``) for the ``with`` block.

    Yields ``begin(batch)``, which tells each part the batch the next forward pass runs on. The
    hooks are removed on exit, also on an exception (TransformerLens's ``model.hooks``).
    """
    hooks = [hook for part in parts for hook in part.hooks()]
    if stop_after is not None:
        hooks.append(stop_hook(stop_after))

    def begin(batch: Batch) -> None:
        for part in parts:
            part.start(batch)

    with model.hooks(fwd_hooks=hooks):
        yield begin


def batched_pass(
    model: Model,
    encoded: Sequence[Encoded],
    n_slots: int,
    parts: Sequence[BatchPart],
    *,
    batch_size: int,
    order: Sequence[int] | None = None,
    logprobs: bool = False,
    with_completion: bool | None = None,
    stop_after: str | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[tuple[Batch, CompletionLogprobs | None]]:
    """The batched pass: yields each batch, after the model ran on it with ``parts`` attached.

    Args:
        model: a HookedTransformer or TransformerBridge.
        encoded: the examples in the slot layout (``sklens.data.format.encode``).
        n_slots: the soft prompt's length (0: no prompt).
        parts: what takes part (``BatchPart``), e.g. ``[prompt.writer(), reader]``.
        batch_size: examples per forward pass.
        order: which examples, in which order (default all, as given).
        logprobs: score the completion (``CompletionLogprobs``, yielded with the batch).
        with_completion: keep the completion tokens in the rows (default: only when scoring;
            a causal model's slot activations do not depend on anything after the slots).
        stop_after: a hook name after which the pass stops (the last hook a reader needs);
            not with ``logprobs``.
        progress: show a tqdm bar labelled ``desc``.
    """
    if logprobs and stop_after is not None:
        raise ValueError("a pass that scores the completion cannot stop early (stop_after)")
    order = list(range(len(encoded))) if order is None else list(order)
    whole = logprobs if with_completion is None else with_completion
    batches = iter_batches(model, encoded, n_slots, batch_size, order=order, with_completion=whole)
    total = -(-len(order) // batch_size)
    with (
        torch.no_grad(),
        linear_layout_for(model, total),
        attached(model, parts, stop_after=stop_after) as begin,
    ):
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress):
            begin(batch)
            if logprobs:
                yield batch, completion_logprobs(model, batch)
            else:
                run_until_stopped(model, batch)
                yield batch, None


@dataclass
class CompletionLogprobs:
    """Log-probabilities of each completion token, right-padded; ``mask`` marks real tokens."""

    logprobs: Float[Tensor, "batch comp"]
    mask: Bool[Tensor, "batch comp"]

    @property
    def mean_loss(self) -> Float[Tensor, " batch"]:
        """Per-example mean cross-entropy over completion tokens (the paper's loss)."""
        return -self.logprobs.sum(1) / self.mask.sum(1)

    @property
    def total_logprob(self) -> Float[Tensor, " batch"]:
        """Per-example log-probability of the whole completion."""
        return self.logprobs.sum(1)


def completion_logprobs(
    model: Model, batch: Batch, *, past_kv_cache: TransformerLensKeyValueCache | None = None
) -> CompletionLogprobs:
    """Run ``model`` (with whatever hooks are attached) and score the completion tokens.

    With ``past_kv_cache`` (HookedTransformer only) ``batch`` continues the sequences whose keys
    and values the cache holds (see ``prefill``).
    """
    n_comp = int(batch.completion_len.max())
    j = torch.arange(n_comp, device=batch.tokens.device)
    mask = j[None, :] < batch.completion_len[:, None]  # (B, C)
    pos = torch.where(mask, batch.completion_start[:, None] - 1 + j, 0)  # predicting positions
    targets = batch.tokens.gather(1, torch.where(mask, pos + 1, 0))  # (B, C)
    if _compat.is_bridge(model):
        logits = model(batch.tokens, attention_mask=batch.attention_mask)
        logits = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    else:
        resid = model(
            batch.tokens,
            attention_mask=batch.attention_mask,
            stop_at_layer=model.cfg.n_layers,
            past_kv_cache=past_kv_cache,
        )  # (B, T, d_model)
        resid = resid.gather(1, pos[..., None].expand(-1, -1, resid.shape[-1]))  # (B, C, d_model)
        logits = model.unembed(model.ln_final(resid))  # (B, C, d_vocab)
    logprobs = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    return CompletionLogprobs(torch.where(mask, logprobs, 0.0), mask)


def prefill(
    model: Model, tokens: Int[Tensor, "batch prefix"], attention_mask: Int[Tensor, "batch prefix"]
) -> TransformerLensKeyValueCache:
    """The keys and values of ``tokens`` at every layer, computed without autograd.

    Training uses it for the part before the slots: under causal attention the prompt cannot
    change it, so it needs neither a backward pass nor stored activations (see ``split_batch``).
    """
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    with torch.no_grad():
        model(
            tokens,
            attention_mask=attention_mask,
            past_kv_cache=cache,
            stop_at_layer=model.cfg.n_layers,
        )
    return cache


def _repeat_cache(
    cache: TransformerLensKeyValueCache, index: Int[Tensor, " rows"]
) -> TransformerLensKeyValueCache:
    """``cache`` with its batch rows taken as ``index`` says (a row may be taken many times)."""
    entries = [
        dataclasses.replace(
            e,
            past_keys=e.past_keys.index_select(0, index.to(e.past_keys.device)),
            past_values=e.past_values.index_select(0, index.to(e.past_values.device)),
        )
        for e in cache.entries
    ]
    mask = cache.previous_attention_mask
    return dataclasses.replace(
        cache, entries=entries, previous_attention_mask=mask.index_select(0, index.to(mask.device))
    )


def shared_prefix_pass(
    model: Model,
    encoded: Sequence[Encoded],
    n_slots: int,
    parts: Sequence[BatchPart],
    groups: Sequence[Sequence[int]],
    *,
    batch_size: int,
) -> Iterator[tuple[Batch, CompletionLogprobs]]:
    """Score rows whose text before the slots is shared within each of ``groups`` (the choices
    of one question): that text runs once per group, with no hooks, and every row continues
    from its keys and values with ``parts`` attached to the slots and completion.

    The same numbers as ``batched_pass(..., logprobs=True)`` (tested) for parts that act only
    at the slots or after them (the prompt writer; an intervention at ``positions="slots"``),
    for a fraction of the work when the shared text is long. HookedTransformer only (a
    TransformerBridge takes no key/value cache), and ``n_slots`` ≥ 1 (the last slot predicts
    the first completion token). ``batch_size`` counts groups.
    """
    if n_slots < 1 or _compat.is_bridge(model):
        raise ValueError("a shared-prefix pass needs a soft prompt and a HookedTransformer")
    pid = pad_id(model.tokenizer)
    device = model.cfg.device
    n_chunks = -(-len(groups) // batch_size)
    with linear_layout_for(model, 2 * n_chunks):  # two passes a chunk: prefix and continuation
        for start in range(0, len(groups), batch_size):
            chunk = groups[start : start + batch_size]
            firsts = [group[0] for group in chunk]
            for group in chunk:
                if any(encoded[i].prefix != encoded[group[0]].prefix for i in group):
                    raise ValueError(f"rows {list(group)} do not share their text before the slots")
            prefix = collate(
                [Encoded(encoded[i].prefix, ()) for i in firsts],
                firsts,
                0,
                pid,
                with_completion=False,
            )
            rows = [i for group in chunk for i in group]
            rest = collate([Encoded((), encoded[i].completion) for i in rows], rows, n_slots, pid)
            owner = torch.tensor([g for g, group in enumerate(chunk) for _ in group])
            with torch.no_grad():
                cache = prefill(model, prefix.tokens.to(device), prefix.attention_mask.to(device))
                rest = rest.to(device)
                with attached(model, parts) as begin:
                    begin(rest)
                    yield (
                        rest,
                        completion_logprobs(model, rest, past_kv_cache=_repeat_cache(cache, owner)),
                    )


def gather_slots(
    activation: Float[Tensor, "batch pos *site"], batch: Batch
) -> Float[Tensor, "batch slot *site"]:
    """The activations at each row's soft-prompt slots (no prompt: its last instruction token)."""
    rows = torch.arange(activation.shape[0], device=activation.device)[:, None]
    return activation[rows, batch.read_positions.to(activation.device)]
