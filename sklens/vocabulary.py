"""The settings of a study (``sklens run``) and the names they accept.

This module imports nothing heavy (no torch, no TransformerLens), so the command line can build its
flags from ``StudyConfig`` and refuse a bad value (``sklens.validate``) in a fraction of a second,
before it imports a model library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

DEFAULT_MODEL = "smollm2-135m-instruct"
TASKS = ("arithmetic", "hans", "skillmix")
DATA_TASKS = ("hans", "skillmix", "arithmetic")  # the tasks that read --data instead of their own
Backend = Literal["auto", "hooked", "bridge"]
Reduce = Literal["max", "absmax"]  # the ranking rules, defined in sklens.stats.ranking
AblationMode = Literal["zero", "mean", "resample", "noise", "scale", "shift"]
Positions = Literal["slots", "all"]  # where an ablation or a mean applies
BACKENDS: tuple[str, ...] = get_args(Backend)
REDUCE_RULES: tuple[str, ...] = get_args(Reduce)
ABLATION_MODES: tuple[str, ...] = get_args(AblationMode)
SITE_NAMES = ("mlp", "heads", "head_dims", "resid")  # sklens.sites; also templates and sae:DIR
MEASURES = (
    "pearson",
    "spearman",
    "auroc",
    "cohens_d",
    "eta_squared",
    "kruskal_wallis",
    "partial_pearson",
)
GROUP_MEASURES = ("eta_squared", "kruskal_wallis")  # need the task's groups


@dataclass
class StudyConfig:
    """Settings of one study (the README's first command uses the defaults).

    Fields hold what the user typed (``str`` where a ``Literal`` names the accepted values,
    e.g. ``reduce`` and ``Reduce``): ``sklens.validate`` checks them and names the fix.
    """

    task: str = "arithmetic"
    model: str = DEFAULT_MODEL
    metric: str | None = None  # default: the task's (loss for arithmetic)
    data: str | None = None
    top_k: int = 10
    n_tokens: int = 20
    steps: int = 150  # the maximum: training stops earlier on a validation plateau
    patience: int = 2  # evaluations without a better plateau-slice loss; 0 trains all `steps`
    eval_every: int = 10  # steps between evaluations of the plateau slice
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    n_train: int = 240  # includes the plateau slice
    n_plateau: int = 32  # training examples held out to detect the plateau
    n_val: int = 160  # the selection set: the scan that picks the top-K
    n_confirm: int = 80  # a disjoint split that re-measures the top-K (0: skip)
    n_extremal: int = 5
    backend: str = "auto"  # hooked where HookedTransformer loads the model, else bridge
    device: str | None = None
    reduce: str = "max"
    ablate: bool = False  # add the causal check (sklens.causal_check) of the top-K neurons
    ablate_modes: str = "zero,mean"
    n_random: int = 5
    n_causal: int = 48  # a third disjoint split, used by the causal check
    match_scale: bool = True  # random control neurons matched in mean |activation|
    steering: str = ""  # e.g. "0,0.5,2,4": a steering curve of the top-K (sklens.steering_curve)
    attribute: bool = False  # attribution of the loss to every unit on the causal split
    permutations: int = 0  # B > 0: max-statistic permutation null, FWER and FDR
    permutation_groups: str | None = None
    mi_bins: int = 0  # A > 0: also rank units by binned mutual information (A bins per unit)
    site: str = "mlp"  # what a unit is: mlp, heads, head_dims, resid, a hook template, sae:DIR
    seeds: str = ""  # e.g. "0,1,2": seed stability of the top-K
    measures: str = ""  # e.g. "spearman,auroc,partial_pearson"; on the confirm split
    covariates: str = ""  # numeric meta fields for partial_pearson
