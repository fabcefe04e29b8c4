"""Training a soft prompt on a frozen model (prompt tuning, Lester et al. 2021).

AdamW on the prompt vectors only; every model weight is frozen for the duration and restored after
(and held in the layout the forward reads, ``sklens.models.layout``).
The loss is the mean over examples of the per-example mean cross-entropy of the completion tokens
(the paper's objective), computed from logits at completion positions only. The batch order is a
pure function of ``seed`` and the step, so a run resumed from a checkpoint takes exactly the same
steps as an uninterrupted one.

A checkpoint is one file (``checkpoint.pt``: prompt, optimizer state, history, step, settings)
replaced in one rename, so a kill at any moment leaves the previous checkpoint or the new one,
never a prompt from one step beside optimizer state from another. Resuming checks that its parts
agree (step, history, optimizer step count) and that it was made with the same settings.
Training stops at the first non-finite loss or prompt instead of saving a NaN prompt.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, no_type_check

import torch
from tqdm.auto import tqdm

from sklens import validate
from sklens.atomic import write_bytes
from sklens.data.example import Example, data_hash
from sklens.data.format import Encoded, encode, iter_batches, split_batch
from sklens.models import _compat
from sklens.models.layout import linear_layout
from sklens.models.protocol import Model
from sklens.prompt import arguments
from sklens.prompt.forward import CompletionLogprobs, batched_pass, completion_logprobs, prefill
from sklens.prompt.soft_prompt import InitMode, SlotWriter, SoftPrompt

logger = logging.getLogger("sklens")

CHECKPOINT_FILE = "checkpoint.pt"


@contextmanager
def frozen(model: Model) -> Iterator[None]:
    """Set ``requires_grad=False`` on every model parameter; restore the flags on exit."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=False):
            p.requires_grad_(flag)


def batch_order(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The example indices of training step ``step``: a fresh permutation every epoch."""
    per_epoch = -(-n // batch_size)
    epoch, within = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[within * batch_size : (within + 1) * batch_size].tolist()


def train_logprobs(
    model: Model, writer: SlotWriter, encoded: Sequence[Encoded], order: Sequence[int]
) -> CompletionLogprobs:
    """Completion log-probabilities of examples ``order`` for a gradient step on the prompt.

    On a HookedTransformer the text before the slots runs once without autograd and the slots and
    completion continue from its keys/values: the same numbers as one pass over the whole rows
    (tested), with no backward pass or stored activations for most of each sequence. A
    TransformerBridge takes the single pass. ``writer`` must be attached.
    """
    if _compat.is_bridge(model):
        batch = next(iter_batches(model, encoded, writer.prompt.n_slots, len(order), order=order))
        writer.start(batch)
        return completion_logprobs(model, batch)
    prefix, prefix_mask, rest = split_batch(model, encoded, writer.prompt.n_slots, order)
    with writer.paused():
        cache = prefill(model, prefix, prefix_mask)
    writer.start(rest)
    return completion_logprobs(model, rest, past_kv_cache=cache)


def _mean_loss(
    model: Model, prompt: SoftPrompt, encoded: Sequence[Encoded], batch_size: int
) -> float:
    """Mean per-example completion loss over ``encoded`` (no gradient)."""
    losses = [
        scores.mean_loss
        for _, scores in batched_pass(
            model, encoded, prompt.n_slots, [prompt.writer()], batch_size=batch_size, logprobs=True
        )
    ]
    return float(torch.cat(losses).mean())


def train_soft_prompt(
    model: Model,
    examples: Sequence[Example],
    *,
    n_slots: int = 20,
    lr: float = 3e-3,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    weight_decay: float = 0.01,
    init: InitMode | str = InitMode.RANDOM,
    init_text: str | None = None,
    val_examples: Sequence[Example] | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    min_delta: float = 0.0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    chat_template: bool | None = None,
    progress: bool = True,
) -> SoftPrompt:
    """Train ``n_slots`` soft-prompt vectors on ``examples`` with the model frozen.

    Give ``steps`` or ``epochs`` (default: 200 steps). With ``patience`` (needs
    ``val_examples``, which should be held out from ``examples``), training stops early on a
    validation plateau: when ``patience`` evaluations in a row (every ``eval_every`` steps) have
    not lowered the best validation loss by more than ``min_delta``; ``steps`` is then the
    maximum. The prompt of the last step is kept (as Keras's EarlyStopping does by default); the
    plateau's verdict is a pure function of ``prompt.history``, so a resumed run stops where an
    uninterrupted one would. ``plateau(prompt.history)`` summarises it.

    With ``checkpoint_dir`` the prompt, the optimizer and the history are saved every
    ``checkpoint_every`` steps, and a later call with the same directory and settings resumes
    from the last checkpoint. ``prompt.history`` holds the training loss of every step and the
    validation loss every ``eval_every`` steps.

    Args:
        model: a HookedTransformer or TransformerBridge; frozen while training, restored after.
        examples: the training examples (``Example``: instruction, completion, meta).
        n_slots: soft-prompt length (the paper: 20).
        lr: AdamW learning rate (the paper: 3e-3).
        steps: optimizer steps, or the maximum with ``patience``; not with ``epochs``.
        epochs: passes over ``examples`` instead of ``steps``.
        batch_size: examples per step; the order is a pure function of ``seed`` and the step.
        seed: seeds the prompt's initialisation and the batch order.
        weight_decay: AdamW weight decay.
        init: ``"random"`` (scaled like the embeddings), ``"text"`` (the embeddings of
            ``init_text``) or ``"sample_vocab"`` (random vocabulary embeddings).
        init_text: the text for ``init="text"``.
        val_examples: held-out examples whose mean loss is recorded every ``eval_every`` steps.
        eval_every: steps between validation losses (default: a tenth of the steps).
        patience: stop after this many evaluations without a new best (needs ``val_examples``).
        restore_best: with ``val_examples``, return the prompt of the lowest validation loss
            (a new best beats the old one by more than ``min_delta``), not the last one;
            ``prompt.config.kept_step`` says which step it is.
        min_delta: how much lower a validation loss must be to count as a new best.
        checkpoint_dir: a directory for the one-file checkpoint; resumes from it when present.
        checkpoint_every: steps between checkpoints (and one at the end).
        chat_template: use the tokenizer's chat template (default: when it has one).
        progress: show a tqdm bar with the losses.

    Returns:
        The trained ``SoftPrompt``; ``prompt.history`` and ``prompt.config.training`` say how.
    """
    options = _Options(
        n_slots=n_slots, lr=lr, steps=steps, epochs=epochs, batch_size=batch_size, seed=seed,
        weight_decay=weight_decay, init=init, init_text=init_text, eval_every=eval_every,
        patience=patience, restore_best=restore_best, min_delta=min_delta,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
        chat_template=chat_template, progress=progress,
    )  # fmt: skip
    run = _Run.prepare(model, examples, val_examples, options)
    with frozen(model), linear_layout(model):
        run.train()
    return run.finish()


@no_type_check  # it holds the arguments before ``check``: sklens's message names a wrong one
@dataclass(frozen=True)
class _Options:
    """``train_soft_prompt``'s settings other than the model and the data, as the caller gave
    them (its docstring says what each does)."""

    n_slots: int
    lr: float
    steps: int | None
    epochs: int | None
    batch_size: int
    seed: int
    weight_decay: float
    init: InitMode | str
    init_text: str | None
    eval_every: int | None
    patience: int | None
    restore_best: bool
    min_delta: float
    checkpoint_dir: str | os.PathLike | None
    checkpoint_every: int
    chat_template: bool | None
    progress: bool

    def check(self) -> None:
        """Refuse settings that cannot train, before the examples are encoded."""
        for setting, value in (("steps", self.steps), ("epochs", self.epochs)):
            if value is not None:
                validate.integer(setting, value)
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        validate.integer("n_slots", self.n_slots, minimum=1, meaning="soft-prompt length")
        validate.integer("batch_size", self.batch_size, minimum=1)
        validate.positive("lr", self.lr)
        validate.integer("checkpoint_every", self.checkpoint_every, minimum=1, meaning="steps")

    def total_steps(self, n_examples: int) -> int:
        """The steps to train (the maximum with ``patience``): ``steps``, ``epochs`` passes over
        ``n_examples``, or 200."""
        per_epoch = -(-n_examples // self.batch_size)
        if self.epochs is not None:
            total = self.epochs * per_epoch
        else:
            total = 200 if self.steps is None else self.steps
        if total < 1:
            raise ValueError(f"training needs at least one step, got {total}")
        return total

    def settings(
        self,
        model: Model,
        examples: Sequence[Example],
        val_examples: Sequence[Example] | None,
        total_steps: int,
        eval_every: int,
    ) -> dict[str, Any]:
        """Everything that changes the trained prompt or its history: a checkpoint made with
        other settings is refused, and ``prompt.config.training`` records them."""
        return {
            "model": getattr(model.cfg, "model_name", None),
            "d_model": model.cfg.d_model,
            "n_slots": self.n_slots,
            "init": InitMode(self.init).value,
            "init_text": self.init_text,
            "lr": self.lr,
            "steps": total_steps,
            "batch_size": self.batch_size,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "n_train": len(examples),
            "train_hash": data_hash(examples),
            "n_val": len(val_examples or []),
            "val_hash": data_hash(list(val_examples)) if val_examples else None,
            "eval_every": eval_every,
            "chat_template": self.chat_template,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "restore_best": self.restore_best and bool(val_examples),
        }


@dataclass
class _Run:
    """One training run, from its first step or its checkpoint's: the encoded data, the prompt,
    its optimizer and the best prompt so far. ``settings`` holds the step count, the examples'
    count and ``eval_every`` as the run uses them."""

    model: Model
    options: _Options
    settings: dict[str, Any]
    encoded: list[Encoded]
    val_encoded: list[Encoded] | None
    prompt: SoftPrompt
    optimizer: torch.optim.Optimizer
    best: _Best
    start: int
    # a float16 model's gradients underflow: its loss is scaled (the scale is not checkpointed;
    # a resumed run starts it anew). A no-op for float32 and bfloat16.
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        half = self.model.cfg.dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.prompt.embedding.device.type, enabled=half)

    @classmethod
    def prepare(
        cls,
        model: Model,
        examples: Sequence[Example],
        val_examples: Sequence[Example] | None,
        options: _Options,
    ) -> _Run:
        """Check the arguments, encode the data and set up the prompt and the optimizer,
        resumed from ``options.checkpoint_dir`` when it holds a checkpoint."""
        arguments.model(model)
        examples = arguments.examples(examples)
        if val_examples is not None:
            val_examples = arguments.examples(val_examples, "val_examples")
        options.check()
        init = InitMode(options.init)
        n_slots, chat_template = options.n_slots, options.chat_template
        encoded = encode(model, examples, n_slots, chat_template=chat_template)
        total_steps = options.total_steps(len(examples))
        patience = options.patience
        if patience is not None and (patience < 1 or not val_examples):
            raise ValueError(
                f"patience must be at least 1 and needs val_examples (a held-out slice of the "
                f"training data), got patience={patience} with {len(val_examples or [])} "
                "val_examples"
            )
        val_encoded = None
        if val_examples:
            val_encoded = encode(model, list(val_examples), n_slots, chat_template=chat_template)
        eval_every = options.eval_every or max(1, total_steps // 10)
        settings = options.settings(model, examples, val_examples, total_steps, eval_every)

        prompt = SoftPrompt.init_for(
            model, n_slots, init=init, init_text=options.init_text, seed=options.seed
        )
        prompt.config.training = settings
        optimizer = torch.optim.AdamW(
            prompt.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        start, best = 0, _Best(options.min_delta)
        if options.checkpoint_dir is not None:
            start = _resume(Path(options.checkpoint_dir), prompt, optimizer, settings, best)
        return cls(model, options, settings, encoded, val_encoded, prompt, optimizer, best, start)

    def train(self) -> None:
        """Train from ``start`` to the last step or the plateau, checkpointing every
        ``checkpoint_every`` steps and at the end."""
        total_steps = self.settings["steps"]
        bar = tqdm(
            total=total_steps,
            initial=self.start,
            desc="train soft prompt",
            disable=not self.options.progress,
        )
        if self.val_encoded is not None and self.start == 0:
            self.prompt.history.append({"step": 0, "val_loss": self.val_loss()})
            self.best.update(self.prompt.history[-1], self.prompt)
        for step in range(self.start, total_steps):
            if self.stopped():
                break
            record = self.step(step)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "step"})
            done = step + 1
            if done % self.options.checkpoint_every == 0 or done == total_steps or self.stopped():
                self.checkpoint(done)
        bar.close()

    def step(self, step: int) -> dict[str, float | int]:
        """One optimizer step (0-based ``step``) on its batch; the step's history record, with
        the validation loss every ``eval_every`` steps and at the last. Refuses a non-finite loss
        or prompt instead of training on from it."""
        order = batch_order(
            self.settings["n_train"], self.options.batch_size, step, self.options.seed
        )
        with self.prompt.attached(self.model) as writer:
            loss = train_logprobs(self.model, writer, self.encoded, order).mean_loss.mean()
        lr = self.options.lr
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"training diverged: the loss is {loss.item()} at step {step + 1} (lr={lr}); "
                "lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not torch.isfinite(self.prompt.embedding).all():
            raise RuntimeError(
                f"training diverged: the prompt is not finite after step {step + 1} "
                f"(lr={lr}); lower the learning rate"
            )
        record: dict[str, float | int] = {"step": step + 1, "train_loss": loss.item()}
        done = step + 1
        if self.val_encoded is not None and (
            done % self.settings["eval_every"] == 0 or done == self.settings["steps"]
        ):
            record["val_loss"] = self.val_loss()
        self.prompt.history.append(record)
        self.best.update(record, self.prompt)
        return record

    def val_loss(self) -> float:
        """The mean loss on the validation examples (the plateau slice)."""
        return _mean_loss(self.model, self.prompt, self.val_encoded, self.options.batch_size)

    def stopped(self) -> bool:
        """Whether the history so far is a plateau (never without ``patience``)."""
        patience = self.options.patience
        return (
            patience is not None
            and plateau(self.prompt.history, patience, self.options.min_delta)["stopped"]
        )

    def checkpoint(self, done: int) -> None:
        """Save the whole training state after step ``done``, with ``checkpoint_dir``."""
        if self.options.checkpoint_dir is not None:
            directory = Path(self.options.checkpoint_dir)
            _checkpoint(directory, self.prompt, self.optimizer, done, self.settings, self.best)

    def finish(self) -> SoftPrompt:
        """Log the plateau's verdict and put the best prompt in place when asked to."""
        if self.options.patience is not None:
            logger.info(
                "training: %s",
                plateau(self.prompt.history, self.options.patience, self.options.min_delta),
            )
        if self.settings["restore_best"]:
            self.best.restore(self.prompt)
        return self.prompt


@dataclass
class _Best:
    """The prompt of the lowest validation loss so far, by ``plateau``'s rule (a new best is
    lower by more than ``min_delta``), so ``restore_best`` keeps the step ``plateau`` reports."""

    min_delta: float
    loss: float = math.inf
    step: int | None = None
    embedding: torch.Tensor | None = None

    def update(self, record: dict[str, Any], prompt: SoftPrompt) -> None:
        if "val_loss" in record and record["val_loss"] < self.loss - self.min_delta:
            self.loss, self.step = record["val_loss"], record["step"]
            self.embedding = prompt.embedding.detach().clone()

    def state(self) -> dict[str, Any]:
        return {"loss": self.loss, "step": self.step, "embedding": self.embedding}

    def load(self, state: dict[str, Any]) -> None:
        self.loss, self.step, self.embedding = state["loss"], state["step"], state["embedding"]

    def restore(self, prompt: SoftPrompt) -> None:
        """Put the best prompt in place, and say so when it is not the last one."""
        last = max((h["step"] for h in prompt.history), default=0)
        if self.embedding is None:
            return
        with torch.no_grad():
            prompt.embedding.copy_(self.embedding)
        prompt.config.kept_step = self.step
        if self.step != last:
            logger.info(
                "training: kept the prompt of step %d (held-out loss %.4f), not the last (%d)",
                self.step, self.loss, last,
            )  # fmt: skip


def plateau(history: Sequence[dict[str, Any]], patience: int, min_delta: float = 0.0) -> dict:
    """Where the validation loss of ``history`` stopped improving.

    Returns ``stopped`` (``patience`` evaluations in a row without a new best lower by more than
    ``min_delta``), ``steps`` (the last step trained), ``best_step`` and ``best_val_loss``,
    ``last_val_loss`` and the number of evaluations.
    """
    evals = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    best_step, best, since = None, float("inf"), 0
    for step, loss in evals:
        if loss < best - min_delta:
            best_step, best, since = step, loss, 0
        else:
            since += 1
    return {
        "stopped": since >= patience,
        "steps": max((h["step"] for h in history), default=0),
        "best_step": best_step,
        "best_val_loss": best if evals else None,
        "last_val_loss": evals[-1][1] if evals else None,
        "n_evaluations": len(evals),
        "patience": patience,
    }


def _checkpoint(
    directory: Path,
    prompt: SoftPrompt,
    optimizer: torch.optim.Optimizer,
    step: int,
    settings: dict[str, Any],
    best: _Best,
) -> None:
    """Write the whole training state as one file, replaced in one rename."""
    payload = {
        "step": step,
        "settings": settings,
        "embedding": prompt.embedding.detach().cpu(),
        "history": prompt.history,
        "optimizer": optimizer.state_dict(),
        "best": best.state(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(directory / CHECKPOINT_FILE, buffer.getvalue())
    logger.info("checkpoint at step %d in %s", step, directory)


def _read_checkpoint(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint in ``path``, after checking its settings and that its parts agree."""
    fix = f"delete {path} to start training over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        step, saved, embedding = state["step"], state["settings"], state["embedding"]
        state["best"]["step"]  # written by every checkpoint since restore_best
        adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
        trained = [h["step"] for h in state["history"] if "train_loss" in h]
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is corrupted ({type(err).__name__}: {err}); {fix}") from err
    if saved != settings:
        changed = sorted(
            k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k)
        )
        raise ValueError(
            f"the checkpoint in {path.parent} was made with other settings ({', '.join(changed)}); "
            "use a fresh checkpoint_dir or the same settings to resume"
        )
    problems = []
    if trained != list(range(1, step + 1)):
        problems.append(f"its history ends at step {trained[-1] if trained else 0}")
    if adam_steps != {step}:
        problems.append(f"its optimizer state is at step {sorted(adam_steps)}")
    shape = (settings["n_slots"], settings["d_model"])
    if tuple(embedding.shape) != shape or not torch.isfinite(embedding).all():
        problems.append(f"its prompt is not a finite {shape} tensor")
    if problems:
        raise ValueError(
            f"{path} is inconsistent: it says step {step} but {'; '.join(problems)}; {fix}"
        )
    return state


def _resume(
    directory: Path,
    prompt: SoftPrompt,
    optimizer: torch.optim.Optimizer,
    settings: dict[str, Any],
    best: _Best,
) -> int:
    """Load the last checkpoint in ``directory`` into ``prompt``, ``optimizer`` and ``best``;
    return its step."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return 0
    state = _read_checkpoint(path, settings)
    with torch.no_grad():
        prompt.embedding.copy_(state["embedding"])
    prompt.history = list(state["history"])
    optimizer.load_state_dict(state["optimizer"])
    best.load(state["best"])
    logger.info("resuming from step %d in %s", state["step"], directory)
    return state["step"]
