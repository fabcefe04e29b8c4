"""The names sklens's settings accept (``Literal`` types and their values), shared by the library
and the study's configs (``sklens.app.config``).

This module imports nothing heavy (no torch, no TransformerLens), so the command line can build its
flags from ``StudyConfig`` and refuse a bad value (``sklens.validate``) in a fraction of a second,
before it imports a model library.
"""

from __future__ import annotations

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
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")  # sklens.models.precision
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
Baseline = Literal["untrained", "no_prompt"]  # sklens.contrast's named baselines
BASELINES: tuple[str, ...] = get_args(Baseline)
# sklens.edits.NAMED: the edits a study's counterfactual stage applies by name
EDIT_NAMES = ("last_digit_decides", "answer_only_negative", "hans_twin")
MIN_BASIS_EXAMPLES = 8  # sklens.basis_test: its probe fits on one half, is tested on the other
