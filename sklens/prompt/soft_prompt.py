"""The soft prompt: ``n_slots`` trainable vectors written into placeholder slots at ``hook_embed``.

The parameter is kept in fp32 and cast to the model's dtype when injected. It passes through its
own ``hook_prompt`` HookPoint, so the prompt itself can be cached or patched with the usual
TransformerLens tools (``prompt.hooks(fwd_hooks=[("hook_prompt", fn)])``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from sklens import validate
from sklens.atomic import write_bytes, write_text
from sklens.data.format import Batch
from sklens.models import _compat
from sklens.models.protocol import Model
from sklens.version import __version__

WEIGHTS_FILE = "soft_prompt.safetensors"
CONFIG_FILE = "soft_prompt.json"


class InitMode(str, Enum):
    """How the prompt vectors start (as PEFT's prompt-tuning init modes)."""

    RANDOM = "random"  # Gaussian directions scaled to the mean token-embedding norm
    TEXT = "text"  # the embeddings of ``init_text``, repeated to fill the slots
    SAMPLE_VOCAB = "sample_vocab"  # embeddings of tokens drawn uniformly from the vocabulary

    @classmethod
    def _missing_(cls, value: object) -> InitMode:
        modes = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"init must be one of {modes}, got {value!r}")


@dataclass
class SoftPromptConfig:
    """Settings that define a soft prompt; saved beside its weights."""

    n_slots: int = 20
    d_model: int = 0
    init: InitMode | str = InitMode.RANDOM
    init_text: str | None = None
    seed: int = 0
    model_name: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    sklens_version: str = __version__
    kept_step: int | None = None  # the training step whose prompt this is (None: the last)

    def __post_init__(self) -> None:
        self.init = InitMode(self.init)
        validate.integer("n_slots", self.n_slots, minimum=1, meaning="soft-prompt length")
        if self.init is InitMode.TEXT and not self.init_text:
            raise ValueError(
                "init='text' needs init_text, the text whose embeddings start the prompt"
            )
        if self.init is not InitMode.TEXT and self.init_text is not None:
            raise ValueError(
                f"init_text is only used with init='text', but init={self.init.value!r}"
            )


class SlotWriter:
    """The ``hook_embed`` hook: writes the prompt into each row's slots.

    A part of the batched pass (``sklens.prompt.forward.BatchPart``): ``start(batch)`` tells it where
    each row's slots begin, so one writer serves a whole scan or training run inside a single
    ``model.hooks(...)`` context.
    """

    def __init__(self, prompt: SoftPrompt):
        self.prompt = prompt
        self.slot_start: Int[Tensor, " batch"] | None = None
        self.active = True

    def hooks(self) -> list[tuple[str, Any]]:
        return [("hook_embed", self)]

    def start(self, batch: Batch) -> None:
        """The batch the next forward pass runs on (its rows' slot positions)."""
        self.slot_start = batch.slot_start

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave embeddings unchanged inside (for a pass over text before the slots)."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def __call__(self, embed: Float[Tensor, "batch pos d_model"], hook: Any) -> Tensor:
        if not self.active:
            return embed
        if self.slot_start is None:
            raise RuntimeError("SlotWriter.slot_start was not set for this batch")
        vectors = self.prompt().to(embed.dtype)  # (k, d_model)
        k = vectors.shape[0]
        rows = torch.arange(embed.shape[0], device=embed.device)[:, None]  # (B, 1)
        cols = self.slot_start.to(embed.device)[:, None] + torch.arange(k, device=embed.device)
        values = vectors.unsqueeze(0).expand(embed.shape[0], -1, -1)  # (B, k, d_model)
        return embed.index_put((rows, cols), values)


class SoftPrompt(HookedRootModule):
    """``n_slots`` vectors of width ``d_model`` that sit after the instruction (see sklens.data)."""

    def __init__(self, config: SoftPromptConfig, embedding: Tensor | None = None):
        super().__init__()
        if config.d_model < 1:
            raise ValueError("SoftPromptConfig.d_model must be set to the model's d_model")
        self.config = config
        if embedding is None:
            embedding = torch.zeros(config.n_slots, config.d_model)
        if tuple(embedding.shape) != (config.n_slots, config.d_model):
            raise ValueError(
                f"embedding has shape {tuple(embedding.shape)}, config says "
                f"({config.n_slots}, {config.d_model})"
            )
        self.embedding = nn.Parameter(embedding.detach().to(torch.float32).clone())
        self.hook_prompt = HookPoint()
        self.history: list[dict[str, float | int]] = []
        self.setup()

    @property
    def n_slots(self) -> int:
        return self.config.n_slots

    def forward(self) -> Float[Tensor, "n_slots d_model"]:
        return self.hook_prompt(self.embedding)

    @classmethod
    def init_for(
        cls,
        model: Model,
        n_slots: int = 20,
        *,
        init: InitMode | str = InitMode.RANDOM,
        init_text: str | None = None,
        seed: int = 0,
    ) -> SoftPrompt:
        """A new prompt sized for ``model``, initialised by ``init`` with a seeded generator."""
        config = SoftPromptConfig(
            n_slots=n_slots,
            d_model=model.cfg.d_model,
            init=init,
            init_text=init_text,
            seed=seed,
            model_name=getattr(model.cfg, "model_name", None),
        )
        w_e = _compat.embedding_matrix(model).detach().to("cpu", torch.float32)
        gen = torch.Generator().manual_seed(seed)
        if config.init is InitMode.RANDOM:
            directions = torch.randn(n_slots, w_e.shape[1], generator=gen)
            norm = w_e.norm(dim=-1).mean()
            vectors = directions / directions.norm(dim=-1, keepdim=True) * norm
        elif config.init is InitMode.SAMPLE_VOCAB:
            ids = torch.randint(0, w_e.shape[0], (n_slots,), generator=gen)
            vectors = w_e[ids]
        else:
            ids = model.tokenizer(init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"init_text {init_text!r} tokenizes to nothing")
            reps = -(-n_slots // len(ids))
            vectors = w_e[torch.tensor((ids * reps)[:n_slots])]
        prompt = cls(config, vectors)
        return prompt.to(_compat.embedding_matrix(model).device)

    def writer(self) -> SlotWriter:
        """A fresh ``hook_embed`` hook bound to this prompt."""
        return SlotWriter(self)

    @contextmanager
    def attached(self, model: Model) -> Iterator[SlotWriter]:
        """Attach to ``model`` for the ``with`` block (removed on exit, also on an exception);
        yields the writer: call ``writer.start(batch)`` before each forward pass."""
        self.check_fits(model)
        writer = self.writer()
        with model.hooks(fwd_hooks=writer.hooks()):
            yield writer

    def check_fits(self, model: Model) -> None:
        """Raise if this prompt's width is not the model's ``d_model``, or if it holds NaN or
        infinite values (which would make every activation NaN and every score silently drop)."""
        if self.config.d_model != model.cfg.d_model:
            raise ValueError(
                f"this soft prompt has width d_model={self.config.d_model} (trained for "
                f"{self.config.model_name!r}) but the model has d_model={model.cfg.d_model}; "
                "train a prompt for this model"
            )
        if not torch.isfinite(self.embedding).all():
            raise ValueError(
                "this soft prompt holds NaN or infinite values: every activation after it would "
                "be NaN; train it again (a lower lr if training diverged) or load a saved prompt"
            )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``soft_prompt.safetensors`` and ``soft_prompt.json`` (atomically) into a directory."""
        directory = Path(directory)
        write_bytes(
            directory / WEIGHTS_FILE,
            save({"embedding": self.embedding.detach().cpu().contiguous()}),
        )
        config = asdict(self.config)
        config["init"] = self.config.init.value
        write_text(
            directory / CONFIG_FILE,
            json.dumps({"config": config, "history": self.history}, indent=2),
        )
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Model | None = None) -> SoftPrompt:
        """Load a saved prompt; with ``model``, check it fits and move it to the model's device."""
        directory = Path(directory)
        weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        for path in (weights, config_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found: is {directory} a saved SoftPrompt?")
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            config = SoftPromptConfig(**saved["config"])
            embedding = load_file(str(weights))["embedding"]
            prompt = cls(config, embedding)
            history = saved.get("history", [])
            if not isinstance(history, list):
                raise TypeError(f"'history' must be a list, got {type(history).__name__}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SafetensorError) as err:
            raise ValueError(
                f"{directory} holds a corrupted soft prompt: {config_path.name} or "
                f"{weights.name} is damaged or was edited ({type(err).__name__}: {err}); re-save "
                "it or train it again"
            ) from err
        prompt.history = history
        if not torch.isfinite(prompt.embedding).all():
            raise ValueError(
                f"{weights} holds NaN or infinite values: the prompt is unusable (its training "
                "diverged or the file is damaged); train it again"
            )
        if model is not None:
            prompt.check_fits(model)
            prompt = prompt.to(_compat.embedding_matrix(model).device)
        return prompt
