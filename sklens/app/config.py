"""The settings of a study (``sklens run``), one typed config per stage.

``StudyConfig`` holds what every stage shares (the task, its splits, the model, the seed) and
composes one config per stage of the method: ``TrainConfig`` (the soft prompt), ``ScanConfig``
(the metric, the units, the null), ``SelectConfig`` (the top-K and its examples),
``ConfirmConfig`` (held-out measures, seed stability) and ``CausalConfig`` (ablation, steering,
attribution). Each is a frozen dataclass that checks its own fields when it is made, with errors
that name the setting as the user wrote it (``top_k`` from Python, ``--top-k`` from the command
line, inside ``validate.spelled_as_flags()``), as TransformerLens's
``HookedTransformerTrainConfig`` and PEFT's ``PromptTuningConfig`` are plain typed configs.

Each stage owns its fingerprint: a stage's output is determined by the shared settings (less the
device, which only says where the work runs), its own config and the configs of the stages before
it (``StudyConfig.stage_settings``), so ``--resume`` needs no hand-kept list of fields to ignore,
and a field added to a stage's config changes that stage's fingerprint and the later ones' only.

The command line's flags are the fields of all these configs, by name (``--steps`` is
``TrainConfig.steps``); ``StudyConfig.from_flags`` builds the configs from them, reading the
comma-separated flags (``--seeds 0,1,2``) into tuples. This module imports nothing heavy (no
torch, no TransformerLens), so ``sklens run`` refuses a bad flag in a fraction of a second.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, get_args, get_type_hints

from sklens import validate
from sklens.validate import assign, name
from sklens.vocabulary import (
    ABLATION_MODES,
    BACKENDS,
    BASELINES,
    DEFAULT_MODEL,
    DTYPE_NAMES,
    EDIT_NAMES,
    MEASURES,
    MIN_BASIS_EXAMPLES,
    REDUCE_RULES,
)

MIN_BOOTSTRAP = 20  # a stay share over fewer resamples moves in steps above 0.05
MIN_ROTATIONS = 19  # p_rotation = (1 + beaten) / (R + 1) reaches 0.05 from R = 19

# the shared settings that say where the work runs, not what it computes
_WHERE = {"device"}


def count(default: int, minimum: int, meaning: str) -> Any:
    """A whole-number field of at least ``minimum``, its bound and meaning beside it, checked by
    ``_check_fields`` with an error that says what the number counts."""
    return field(default=default, metadata={"minimum": minimum, "meaning": meaning})


def items(example: str, default: tuple[Any, ...] = ()) -> Any:
    """A tuple field, its element type the annotation's (``tuple[int, ...]``), checked by
    ``_check_fields``; ``example`` is a value its errors suggest."""
    return field(default=default, metadata={"example": example})


def _check_fields(config: Any) -> None:
    """Every ``count`` field of ``config`` a whole number of at least its minimum, and every
    ``items`` field a tuple of its element type (a list is taken as the tuple it holds)."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        if "minimum" in f.metadata:
            validate.integer(f.name, getattr(config, f.name), **f.metadata)
        elif "example" in f.metadata:
            _tuple_of(config, f.name, get_args(hints[f.name])[0], f.metadata["example"])


def _off_or_at_least(
    config: Any, f: str, minimum: int, meaning: str, why: str, example: int
) -> None:
    """Field ``f`` a whole number, 0 (its check is off) or at least ``minimum``; ``why`` says
    why fewer say nothing, ``example`` is a value to suggest."""
    value = validate.integer(f, getattr(config, f), minimum=0, meaning=f"{meaning}; 0 skips them")
    if 0 < value < minimum:
        raise ValueError(
            f"{assign(f, value)} is too few {meaning} (at least {minimum}): {why}; raise it, "
            f"e.g. {assign(f, example)}, or pass {assign(f, 0)} to skip them"
        )


def _tuple_of(config: Any, f: str, kind: type, example: str) -> None:
    """Store a sequence field as a tuple of ``kind`` (a list is taken as the tuple it holds); a
    comma-separated string is the command line's spelling, refused here with the fix."""
    value = getattr(config, f)
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name(f)} must be a tuple, e.g. {f}={example}; got {value!r}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kind)]
    if kind is float:
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise TypeError(
            f"{name(f)} must hold {kind.__name__}s, e.g. {assign(f, example)}; got {bad}"
        )
    object.__setattr__(config, f, tuple(kind(v) for v in value))


@dataclass(frozen=True)
class TrainConfig:
    """How the soft prompt is trained (``sklens.train_soft_prompt``): its length, the most steps,
    the learning rate and the plateau rule on a held-out slice of the training examples."""

    n_slots: int = count(20, 1, "soft-prompt length")
    steps: int = count(150, 1, "training steps")  # the most: training stops earlier on a plateau
    patience: int = count(2, 0, "evaluations without improvement before training stops; 0: never")
    eval_every: int = count(10, 1, "training steps between plateau evaluations")
    lr: float = 3e-3
    n_plateau: int = count(32, 0, "training examples held out to detect the plateau")

    def __post_init__(self) -> None:
        _check_fields(self)
        validate.positive("lr", self.lr)


@dataclass(frozen=True)
class ScanConfig:
    """What the scan correlates (``sklens.scan``): the metric, the units (the site) and the null.

    ``metric`` None takes the task's own; ``site`` is spelled as on the command line (``mlp``,
    ``heads``, a hook template, ``sae:DIR``)."""

    metric: str | None = None
    site: str = "mlp"
    permutations: int = 0  # B > 0: max-statistic permutation null, FWER and FDR
    permutation_groups: str | None = None
    mi_bins: int = 0  # A > 0: also rank units by binned mutual information (A bins per unit)

    def __post_init__(self) -> None:
        if self.metric is not None:
            validate.metric_spec(self.metric)
        validate.site(self.site)
        validate.integer("permutations", self.permutations, minimum=0, meaning="0 for none")
        if self.mi_bins and self.permutation_groups:
            raise ValueError(
                f"{name('mi_bins')} ranks by marginal mutual information, but "
                f"{name('permutation_groups')} asks for a within-group statistic: drop one of them"
            )


@dataclass(frozen=True)
class SelectConfig:
    """Which units the study reports: the top-K by the ranking rule, with their extremal
    examples."""

    top_k: int = count(10, 1, "how many top neurons to report")
    reduce: str = "max"  # a sklens.vocabulary.Reduce, checked here
    n_extremal: int = count(5, 1, "examples shown per neuron and direction")

    def __post_init__(self) -> None:
        validate.choice("reduce", self.reduce, REDUCE_RULES)
        _check_fields(self)


@dataclass(frozen=True)
class ConfirmConfig:
    """The confirmation: a disjoint split that re-measures the top-K (``n_confirm``; 0 skips it),
    further measures there, seed stability of the top-K, the per-unit contrast of the trained
    prompt against baselines on the selection split (``contrast``), how often bootstrap
    resamples of the selection split keep each top unit in the top-K (``bootstrap``) and, on the
    confirmation split, whether the neuron basis privileges each top unit (``basis_rotations``);
    and how the model behaves on each group of a meta field (``behaviour_by``, on the examples
    the prompt never trained on, those of ``behaviour_where`` only), with and without the
    prompt."""

    n_confirm: int = count(80, 0, "examples that re-measure the top-K; 0 skips the confirmation")
    measures: tuple[str, ...] = items("('spearman', 'auroc')")  # also: "partial_pearson"
    covariates: tuple[str, ...] = items("('n_digits',)")  # numeric meta fields for partial_pearson
    seeds: tuple[int, ...] = items("(0, 1, 2)")  # seed stability of the top-K
    contrast: tuple[str, ...] = items("('untrained', 'no_prompt')")  # sklens.contrast per unit
    bootstrap: int = 0  # B > 0: sklens.selection_stability of the top-K, B resamples
    basis_rotations: int = 0  # R > 0: sklens.basis_test of the top-K against R random bases
    behaviour_by: str | None = None  # a meta field: sklens.behaviour per group
    behaviour_where: str | None = None  # "FIELD=VALUE": only those examples, e.g. operation=...

    def __post_init__(self) -> None:
        _check_fields(self)
        validate.choices("measures", ",".join(self.measures), MEASURES)
        validate.choices("contrast", ",".join(self.contrast), BASELINES)
        if len(set(self.contrast)) < len(self.contrast):
            raise ValueError(
                f"{name('contrast')} names a baseline twice, got {self.contrast!r}; e.g. "
                f"{validate.example('contrast', 'untrained,no_prompt', ('untrained', 'no_prompt'))}"
            )
        if bool(self.covariates) != ("partial_pearson" in self.measures):
            raise ValueError(
                f"{name('covariates')} and {name('measures')} partial_pearson go together: the "
                "covariates are what partial_pearson controls for"
            )
        if self.seeds and len(set(self.seeds)) < 2:
            raise ValueError(
                f"{name('seeds')} must be two or more different whole numbers, got "
                f"{self.seeds!r}; e.g. {validate.example('seeds', '0,1,2', (0, 1, 2))}"
            )
        if 0 < self.n_confirm < 4:
            raise ValueError(
                f"{assign('n_confirm', self.n_confirm)} is too few to confirm on (at least 4); "
                f"raise it, or pass {assign('n_confirm', 0)} to skip the confirmation"
            )
        if self.measures and self.n_confirm == 0:
            raise ValueError(
                f"{name('measures')} are computed on the confirmation split, never on the "
                f"examples that selected the neurons: pass {name('n_confirm')} > 0"
            )
        self._check_selection_tests()
        self._check_behaviour()

    def _check_behaviour(self) -> None:
        """``behaviour_where`` a ``FIELD=VALUE`` filter, and only beside ``behaviour_by``."""
        where = self.behaviour_where
        if where is not None and self.behaviour_by is None:
            raise ValueError(
                f"{name('behaviour_where')} filters the examples of {name('behaviour_by')}: "
                "pass both, or drop it"
            )
        if where is not None and not re.fullmatch(r"[^=\s]+=\S.*", where):
            raise ValueError(
                f"{name('behaviour_where')} must be FIELD=VALUE, got {where!r}; e.g. "
                f"{assign('behaviour_where', 'operation=multiplication')}"
            )

    def _check_selection_tests(self) -> None:
        """``bootstrap`` and ``basis_rotations``: 0 (off) or enough to say something, and the
        basis test on a confirmation split large enough to fit and test its probe."""
        _off_or_at_least(
            self, "bootstrap", MIN_BOOTSTRAP, "bootstrap resamples",
            "a stay share over fewer moves in steps larger than 0.05", 200,
        )  # fmt: skip
        _off_or_at_least(
            self, "basis_rotations", MIN_ROTATIONS, "random bases",
            f"p_rotation is at least 1/(R + 1), so it needs {MIN_ROTATIONS} to reach 0.05", 99,
        )  # fmt: skip
        if self.basis_rotations and self.n_confirm < MIN_BASIS_EXAMPLES:
            raise ValueError(
                f"{name('basis_rotations')} tests the top-K on the confirmation split, held out "
                f"from the examples that selected them, and needs at least {MIN_BASIS_EXAMPLES} "
                f"there (half fit its probe, half test it), but "
                f"{assign('n_confirm', self.n_confirm)}: raise {name('n_confirm')}, or pass "
                f"{assign('basis_rotations', 0)}"
            )


@dataclass(frozen=True)
class CausalConfig:
    """The causal follow-ups on a third disjoint split (``n_causal`` examples): the causal check
    of the top-K against ``n_random`` random sets (``ablate``), with a positive control and
    random units matched in layer, |activation| and |score| decile; its dose-response over k
    (``dose_response``, against ``dose_random`` random sets per k); a steering curve
    (``steering`` factors, against ``steering_random`` random sets); attribution of the loss to
    every unit (``attribute``); and counterfactual pairs (``counterfactual``: named edits of
    held-out examples, at most ``n_causal`` pairs).

    199 random sets let the causal check's rank p reach 0.005 (5 could not reach 0.05); each is
    one pass over the causal split per mode, so the check costs ``2 · (n_random + 2)`` passes
    with the two default modes. The dose-response costs ``rankings · len(dose_response) ·
    (dose_random + 1)`` passes: 400 for two rankings, four k and 49 random sets (each k's rank p
    reaches 0.02), where 199 would make it 1,600, most of a study's time on a CPU."""

    ablate: bool = False
    ablate_modes: tuple[str, ...] = items("('zero', 'mean')", ("zero", "mean"))
    n_random: int = count(199, 1, "random neuron sets in the causal check")
    n_causal: int = count(48, 2, "examples in the causal check")
    stratify: bool = True  # the causal split balanced over the task's groups (e.g. operation)
    match_scale: bool = True  # random control units matched in mean |activation|
    match_score: bool = True  # ... and drawn from their selected unit's decile of |score|
    positive_control: bool = True  # the attribution's top-K, else every unit of the layers
    dose_response: tuple[int, ...] = items("(1, 2, 5, 10)")  # the top-k ablated for each k
    dose_random: int = count(49, 1, "random sets per k of the dose-response")
    steering: tuple[float, ...] = items("(0, 0.5, 2, 4)")  # factors that scale the top-K
    steering_random: int = count(20, 1, "random sets the steering curve compares with")
    attribute: bool = False
    counterfactual: tuple[str, ...] = items("('hans_twin',)")  # named edits: sklens.edits.NAMED
    score_choices: bool = True  # False: the causal check measures the loss only, no choice

    def __post_init__(self) -> None:
        _check_fields(self)
        validate.choices("ablate_modes", ",".join(self.ablate_modes), ABLATION_MODES)
        validate.choices("counterfactual", ",".join(self.counterfactual), EDIT_NAMES)
        if any(k < 1 for k in self.dose_response):
            raise ValueError(
                f"{name('dose_response')} must be set sizes of at least 1, got "
                f"{self.dose_response}; e.g. {validate.example('dose_response', '1,2,5,10', (1, 2, 5, 10))}"
            )

    @property
    def uses_causal_split(self) -> bool:
        """Whether any follow-up runs, so the task is cut with a causal split."""
        return self.ablate or bool(self.steering) or self.attribute or bool(self.dose_response)


@dataclass(frozen=True)
class StudyConfig:
    """Settings of one study (the README's first command uses the defaults): the shared ones
    here, each stage's in its own config.

    Example::

        StudyConfig(task="hans", train=TrainConfig(steps=60), causal=CausalConfig(ablate=True))
    """

    task: str = "arithmetic"
    model: str = DEFAULT_MODEL
    data: str | None = None
    backend: str = "auto"  # hooked where HookedTransformer loads the model, else bridge
    device: str | None = None
    dtype: str = "auto"  # the model's: the fastest that matches float32 here (models.precision)
    seed: int = 0  # the data split, the prompt's initialisation and every random control
    # a negative control: this meta field's values permuted among the examples before the split,
    # so that nothing in the model can track it; the whole pipeline then says what it says when
    # there is nothing to find
    shuffle_label: str | None = None
    batch_size: int = count(8, 1, "examples per forward pass")
    n_train: int = count(240, 1, "training examples")  # includes the plateau slice
    # the selection set: the scan that picks the top-K
    n_val: int = count(160, validate.MIN_SCAN, "validation examples; a correlation needs 3")
    train: TrainConfig = field(default_factory=TrainConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    causal: CausalConfig = field(default_factory=CausalConfig)

    STAGES: ClassVar[tuple[str, ...]] = ("train", "scan", "select", "confirm", "causal")

    def __post_init__(self) -> None:
        validate.task(self.task, self.data)
        for f in ("task", "data"):  # a run's files are found from any working directory
            value = getattr(self, f)
            if value is not None and (f == "data" or value.endswith(".jsonl")):
                object.__setattr__(self, f, str(Path(value).absolute()))
        validate.choice("backend", self.backend, BACKENDS)
        validate.choice("dtype", self.dtype, DTYPE_NAMES)
        validate.device(self.device)
        _check_fields(self)
        validate.integer("seed", self.seed)
        for stage, kind in _STAGE_TYPES.items():
            if not isinstance(getattr(self, stage), kind):
                raise TypeError(
                    f"{stage} must be a sklens.{kind.__name__}, got {getattr(self, stage)!r}"
                )
        validate.mi_bins(self.scan.mi_bins, self.n_val)
        train = self.train
        if train.patience and not 1 <= train.n_plateau < self.n_train:
            raise ValueError(
                f"{assign('n_plateau', train.n_plateau)} must hold out between 1 and "
                f"{name('n_train')} − 1 = {self.n_train - 1} training examples to detect the "
                f"plateau; change it, or pass {assign('patience', 0)} to train all "
                f"{name('steps')}"
            )
        if self.confirm.bootstrap and self.scan.permutation_groups is not None:
            raise ValueError(
                f"{name('bootstrap')} resamples the marginal r, but "
                f"{name('permutation_groups')} scans the within-group r: drop one of them"
            )

    # -- the stages' fingerprints ---------------------------------------------------------------

    def shared(self) -> dict[str, Any]:
        """The shared settings that determine every stage's output (the device does not)."""
        return {f.name: getattr(self, f.name) for f in _shared_fields() if f.name not in _WHERE}

    def stage_settings(
        self, metric: str, hashes: Mapping[str, str], site: str, version: str
    ) -> dict[str, dict[str, Any]]:
        """What determines each stage's output, for ``rundir``'s fingerprints: the shared
        settings, the stage's own config and the fingerprints of the stages before it.

        ``metric`` is the spec in use (the task's default where ``scan.metric`` is None),
        ``hashes`` the data hashes of the ``train`` and ``val`` splits, ``site`` the site's
        name (for SAEs it carries a hash of their weights)."""
        from sklens.app.rundir import fingerprint  # rundir imports the artifacts' hashing

        common = {**self.shared(), "sklens version": version}
        training = {**common, **asdict(self.train), "train data": hashes["train"]}
        training["validation data"] = hashes["val"]
        scan = {**common, **asdict(self.scan), "metric": metric}
        scan |= {"trained prompt": fingerprint(training), "site unit": site}
        scan["validation data"] = hashes["val"]
        results = {**common, "scan": fingerprint(scan)}
        results |= {stage: asdict(getattr(self, stage)) for stage in ("select", "confirm")}
        results["causal"] = asdict(self.causal)
        return {"training": training, "scan": scan, "results": results}

    # -- flags and saved summaries ---------------------------------------------------------------

    @classmethod
    def flags(cls) -> Iterator[tuple[str, Any]]:
        """Every setting as the command line names it (``n_slots`` for ``--n-slots``), with
        its default, the shared ones first, then each stage's in order."""
        defaults = cls()
        for f in _shared_fields():
            yield f.name, getattr(defaults, f.name)
        for stage in _STAGE_TYPES:
            config = getattr(defaults, stage)
            for f in fields(config):
                yield f.name, getattr(config, f.name)

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> StudyConfig:
        """The configs from flat settings named as the flags are (comma-separated strings for
        the tuple fields, as the command line passes them)."""
        try:
            return cls._from_flat({k: _parse_flag(k, v) for k, v in values.items()})
        except KeyError as err:
            raise ValueError(f"unknown settings {err.args[0]}") from None

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> StudyConfig:
        """The config ``asdict`` wrote (``summary.json``'s ``config``); a key this version does
        not know raises ``KeyError`` naming it. The files it names need not exist any more."""
        flat = {k: v for k, v in saved.items() if k not in cls.STAGES}
        for stage in cls.STAGES:
            own = saved.get(stage, {})
            if not isinstance(own, Mapping):
                raise KeyError(stage)
            flat |= {k: tuple(v) if isinstance(v, list) else v for k, v in own.items()}
        with validate.files_unchecked():
            return cls._from_flat(flat)

    @classmethod
    def _from_flat(cls, flat: Mapping[str, Any]) -> StudyConfig:
        """The configs from settings named as the flags are; ``KeyError`` names unknown ones."""
        unknown = sorted(set(flat) - {n for n, _ in cls.flags()})
        if unknown:
            raise KeyError(", ".join(unknown))
        shared = {f.name: flat[f.name] for f in _shared_fields() if f.name in flat}
        stages = {
            stage: kind(**{f.name: flat[f.name] for f in fields(kind) if f.name in flat})
            for stage, kind in _STAGE_TYPES.items()
        }
        return cls(**shared, **stages)

    def resolved(self, backend: str, dtype: str) -> StudyConfig:
        """The same settings with ``backend`` and ``dtype`` resolved (``auto`` picks one per
        model and device), so that a run's fingerprints and summary name what it ran with."""
        return replace(self, backend=backend, dtype=dtype)


_STAGE_TYPES = {
    "train": TrainConfig,
    "scan": ScanConfig,
    "select": SelectConfig,
    "confirm": ConfirmConfig,
    "causal": CausalConfig,
}


def _shared_fields() -> list[Any]:
    return [f for f in fields(StudyConfig) if f.name not in StudyConfig.STAGES]


def _parse_flag(flag: str, value: Any) -> Any:
    """A comma-separated flag's string as its field's tuple, with the command line's errors."""
    if not isinstance(value, str) or flag not in _LIST_FLAGS:
        return value
    parts = validate.items(value)
    if flag == "seeds":
        bad = [s for s in parts if not re.fullmatch(r"-?\d+", s)]
        if bad or (parts and len(set(parts)) < 2):
            raise ValueError(
                f"{name('seeds')} must be two or more different whole numbers separated by "
                f"commas, got {value!r}; e.g. {assign('seeds', '0,1,2')}"
            )
        return tuple(int(s) for s in parts)
    if flag == "steering":
        bad = [f for f in parts if not validate.finite_number(f)]
        if bad or (value.strip() and not parts):
            raise ValueError(
                f"{name('steering')} must be numbers separated by commas (the factors that scale "
                f"the top-K), got {bad}; e.g. {assign('steering', '0,0.5,2,4')}"
            )
        return tuple(float(f) for f in parts)
    if flag == "dose_response":
        bad = [k for k in parts if not re.fullmatch(r"\d+", k)]
        if bad:
            raise ValueError(
                f"{name('dose_response')} must be whole numbers separated by commas (the set "
                f"sizes), got {bad}; e.g. {assign('dose_response', '1,2,5,10')}"
            )
        return tuple(int(k) for k in parts)
    if flag == "measures":
        return tuple(validate.choices("measures", value, MEASURES))
    if flag == "ablate_modes":
        return tuple(validate.choices("ablate_modes", value, ABLATION_MODES))
    if flag == "contrast":
        return tuple(validate.choices("contrast", value, BASELINES))
    if flag == "counterfactual":
        return tuple(validate.choices("counterfactual", value, EDIT_NAMES))
    return tuple(parts)


_LIST_FLAGS = {
    "seeds", "steering", "measures", "ablate_modes", "covariates", "dose_response", "contrast",
    "counterfactual",
}  # fmt: skip
