"""Auxiliary metrics: one real number per example, from its labels or from the model's behaviour.

Use ``label`` for an external label (a skill, a heuristic, a shortcut flag, any numeric meta field);
``loss`` or ``confidence`` for what the model does with the trained prompt, computed in the same
forward pass as the scan; ``choice_confidence`` for multiple-choice tasks (the probability of the
correct choice renormalised over the choices, scored before the scan); ``from_callable`` (or any
plain callable ``Example -> float``) for anything else; ``values`` for numbers computed elsewhere,
one per example.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sklens import validate
from sklens.data.example import Example
from sklens.prompt.forward import CompletionLogprobs


class Metric(ABC):
    """Maps a batch of examples (and, if ``needs_logprobs``, the model's scores) to numbers."""

    name: str
    needs_logprobs: bool = False  # computed from the scan's own pass (completion log-probs)
    needs_choices: bool = False  # computed from every choice scored first (``ChoiceScores``)

    @abstractmethod
    def __call__(
        self,
        examples: Sequence[Example],
        indices: Sequence[int],
        scores: CompletionLogprobs | None,
    ) -> Float[Tensor, " batch"]:
        """Values for ``examples`` (positions ``indices`` in the full list)."""

    def subset(self, indices: Sequence[int]) -> Metric:
        """The metric for ``examples[indices]`` (only precomputed values need re-indexing)."""
        return self

    def check(self, examples: Sequence[Example]) -> None:
        """Raise before any model work if the metric cannot be computed on ``examples``."""
        return None

    def __repr__(self) -> str:
        return f"<metric {self.name}>"


class _Label(Metric):
    def __init__(self, key: str, positive: Any = None):
        self.key, self.positive = key, positive
        self.name = f"label:{key}" + ("" if positive is None else f"={positive}")

    def value(self, example: Example, index: int) -> float:
        if self.key not in example.meta:
            raise ValueError(
                f"example {index} has no meta field {self.key!r} (it has {sorted(example.meta)})"
            )
        value = example.meta[self.key]
        if self.positive is not None:
            return 1.0 if value == self.positive else 0.0
        if isinstance(value, (bool, Real)):
            return float(value)
        raise ValueError(
            f"meta[{self.key!r}] of example {index} is {value!r}, not a number; pass "
            f"positive=... to make a binary metric, e.g. label({self.key!r}, positive={value!r})"
        )

    def __call__(self, examples, indices, scores):
        return torch.tensor(
            [self.value(e, i) for e, i in zip(examples, indices, strict=False)], dtype=torch.float64
        )


class _Callable(Metric):
    def __init__(self, fn: Callable[[Example], float], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def __call__(self, examples, indices, scores):
        return torch.tensor(
            [self.value(e, i) for e, i in zip(examples, indices, strict=False)], dtype=torch.float64
        )

    def value(self, example: Example, index: int) -> float:
        value = self.fn(example)
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"metric {self.name!r} returned {value!r} ({type(value).__name__}) for example "
                f"{index}; it must return one number per example"
            ) from err


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class _Values(Metric):
    def __init__(self, values: Sequence[float] | Tensor | np.ndarray, name: str = "values"):
        try:  # a copy: a caller's read-only array must not back our tensor
            if isinstance(values, Tensor):
                self.values = values.detach().to("cpu", torch.float64).clone()
            else:
                self.values = torch.as_tensor(np.array(values, dtype=np.float64))
        except (TypeError, ValueError) as err:
            flat = list(np.asarray(values, dtype=object).flatten())
            bad = next((i for i, v in enumerate(flat) if not _is_number(v)), None)
            where = f": value {bad} is {flat[bad]!r}" if bad is not None else f" ({err})"
            raise TypeError(
                f"metric {name!r} must be one number per example{where}; convert the values to "
                "numbers (e.g. a label with sklens.metrics.label(key, positive=...))"
            ) from err
        if self.values.ndim != 1:
            raise ValueError(
                f"metric values must be one number per example, got shape "
                f"{tuple(self.values.shape)}"
            )
        self.name = name

    def __call__(self, examples, indices, scores):
        return self.values[list(indices)]

    def subset(self, indices: Sequence[int]) -> Metric:
        return _Values(self.values[list(indices)], self.name)


class _Loss(Metric):
    name = "loss"
    needs_logprobs = True

    def __call__(self, examples, indices, scores):
        return scores.mean_loss.detach().to("cpu", torch.float64)


class _Confidence(Metric):
    name = "confidence"
    needs_logprobs = True

    def __call__(self, examples, indices, scores):
        return scores.total_logprob.detach().to("cpu", torch.float64).exp()


class _ChoiceConfidence(Metric):
    name = "choice_confidence"
    needs_choices = True

    def check(self, examples):
        from sklens.scanning.choices import is_multiple_choice

        if not is_multiple_choice(examples):
            raise ValueError(
                "choice_confidence needs multiple-choice examples: every Example.meta needs a "
                "'choices' list and an 'answer' among them; use loss or confidence otherwise"
            )

    def __call__(self, examples, indices, scores):
        return scores.choice_confidence.detach().to("cpu", torch.float64)


def label(key: str, positive: Any = None) -> Metric:
    """``meta[key]`` as a number; with ``positive``, 1.0 where ``meta[key] == positive`` else 0.0."""
    return _Label(key, positive)


def loss() -> Metric:
    """Per-example mean cross-entropy of the completion tokens with the trained prompt."""
    return _Loss()


def confidence() -> Metric:
    """Probability the model gives the whole completion (product of its token probabilities).

    Confounded with length: a ten-digit answer gets a far smaller probability than a one-digit
    one whatever the model knows, and the values are heavily skewed (a poor input for Pearson).
    For multiple-choice tasks prefer ``choice_confidence``.
    """
    return _Confidence()


def choice_confidence() -> Metric:
    """``p(answer) / Σ_c p(c)`` over the example's ``meta["choices"]``, with the trained prompt.

    Renormalising over the same question's choices removes most of the length confound of
    ``confidence``. Every choice is scored once before the scan (``sklens.scanning.choices``), so the scan
    itself treats the values as known, like a label.
    """
    return _ChoiceConfidence()


def from_callable(fn: Callable[[Example], float], name: str | None = None) -> Metric:
    """Any function of one example."""
    return _Callable(fn, name)


def values(numbers: Sequence[float] | Tensor | np.ndarray, name: str = "values") -> Metric:
    """Precomputed metric values, one per example in the order given to ``scan``."""
    return _Values(numbers, name)


def from_spec(spec: str) -> Metric:
    """The metric a spec string names, as ``sklens run --metric`` takes it: ``loss`` |
    ``confidence`` | ``choice_confidence`` | ``label:KEY`` | ``label:KEY=VALUE``."""
    validate.metric_spec(spec)
    if spec == "loss":
        return loss()
    if spec == "confidence":
        return confidence()
    if spec == "choice_confidence":
        return choice_confidence()
    return label(*validate.label_spec(spec))


# What a metric argument accepts: a Metric, a spec (``"loss"``, ``"label:skill=spatial"``), a
# function of one example, or one precomputed number per example.
MetricLike = Metric | str | Callable[[Example], float] | Sequence[float] | Tensor | np.ndarray


def resolve(metric: MetricLike, n: int) -> Metric:
    """Turn what the user passed into a Metric (a spec string: ``from_spec``), checking
    precomputed values against ``n``."""
    if isinstance(metric, Metric):
        resolved = metric
    elif isinstance(metric, str):
        resolved = from_spec(metric)
    elif callable(metric):
        resolved = from_callable(metric)
    elif isinstance(metric, (Sequence, np.ndarray, Tensor)) and not isinstance(metric, str):
        resolved = values(metric)
    else:
        raise TypeError(
            f"metric must be a sklens.metrics.Metric, a spec such as 'loss' or 'label:KEY=VALUE', "
            f"a callable Example -> float, or one number per example; got {type(metric).__name__}"
        )
    if isinstance(resolved, _Values) and len(resolved.values) != n:
        raise ValueError(
            f"the metric has {len(resolved.values)} values but there are {n} examples; "
            "pass one value per example, in the same order"
        )
    return resolved


def check_values(values: Float[Tensor, " n"], name: str) -> None:
    """Raise if metric values cannot give a correlation: NaN/inf, or constant."""
    bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"metric {name!r} is NaN or infinite for {len(bad)} example(s) (indices {shown}); "
            "fix or drop those examples"
        )
    spread = float(values.max() - values.min())
    if spread <= 1e-12 * max(1.0, float(values.abs().max())) or math.isnan(spread):
        raise ValueError(
            f"metric {name!r} is constant ({float(values[0])!r} for every example): a correlation "
            "with it is undefined; choose a metric that varies across the examples"
        )
