"""sklens: find skill neurons in language models (Zhao et al. 2025, arXiv 2511.21610).

Train a soft prompt on a frozen TransformerLens model, correlate every MLP neuron's activation at
the prompt's slots with an auxiliary metric, and inspect the neurons that track it. Other units
(attention heads, residual dimensions or directions, any hook, SAE latents) are sites
(``sklens.sites``).

Names are imported on first use (PEP 562), so ``import sklens`` costs nothing and the ``sklens``
command checks its flags before it pays for importing torch and TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sklens.version import __version__

# public submodules by attribute name (``sklens.metrics.label(...)``)
_SUBMODULES = {
    "data": "sklens.data",
    "edits": "sklens.causal.edits",
    "figures": "sklens.views.figures",
    "metrics": "sklens.scanning.metrics",
    "viz": "sklens.views.viz",
    "stats": "sklens.stats",
    "models": "sklens.models",
    "sites": "sklens.units.sites",
}
_EXPORTS = {
    "NeuronIntervention": "sklens.causal.ablate",
    "ablated": "sklens.causal.ablate",
    "ablation_hooks": "sklens.causal.ablate",
    "run_with_cache": "sklens.scanning.activation_cache",
    "Attribution": "sklens.causal.attribution",
    "attribute": "sklens.causal.attribution",
    "hold_freed_memory": "sklens.allocator",
    "neuron_activations": "sklens.scanning.activations",
    "slot_activations": "sklens.scanning.activations",
    "top_examples": "sklens.scanning.activations",
    "causal_check": "sklens.causal.check",
    "behaviour": "sklens.causal.behaviour",
    "Counterfactual": "sklens.causal.counterfactual",
    "counterfactual": "sklens.causal.counterfactual",
    "Explanations": "sklens.explanation.explain",
    "explain": "sklens.explanation.explain",
    "dose_response": "sklens.causal.check",
    "evaluate": "sklens.causal.check",
    "neuron_stats": "sklens.causal.check",
    "NeuronEvidence": "sklens.explanation.evidence",
    "collect_evidence": "sklens.explanation.evidence",
    "neuron_text_view": "sklens.explanation.evidence",
    "neuron_topk_view": "sklens.explanation.evidence",
    "random_sets": "sklens.causal.controls",
    "DEFAULT_MODEL": "sklens.vocabulary",
    "StudyConfig": "sklens.app.config",
    "TrainConfig": "sklens.app.config",
    "ScanConfig": "sklens.app.config",
    "SelectConfig": "sklens.app.config",
    "ConfirmConfig": "sklens.app.config",
    "CausalConfig": "sklens.app.config",
    "Contrast": "sklens.confirm.contrast",
    "contrast": "sklens.confirm.contrast",
    "BasisTest": "sklens.confirm.selection",
    "SelectionStability": "sklens.confirm.selection",
    "basis_test": "sklens.confirm.selection",
    "selection_stability": "sklens.confirm.selection",
    "confirm_neurons": "sklens.confirm.held_out",
    "held_out": "sklens.confirm.held_out",
    "neuron_measures": "sklens.confirm.held_out",
    "Example": "sklens.data.example",
    "HookMeaningError": "sklens.models.hook_check",
    "check_neuron_hooks": "sklens.models.hook_check",
    "SUPPORTED_ARCHITECTURES": "sklens.models.load",
    "gguf_to_checkpoint": "sklens.models.load",
    "load_model": "sklens.models.load",
    "keep_storage": "sklens.models.layout",
    "Model": "sklens.models.protocol",
    "GroupedMoments": "sklens.stats.moments",
    "Moments": "sklens.stats.moments",
    "scan_activations": "sklens.scanning.precomputed",
    "Scan": "sklens.scanning.result",
    "sparsity": "sklens.scanning.sparsity",
    "scan": "sklens.scanning.scan",
    "Site": "sklens.units.sites",
    "Directions": "sklens.units.sites",
    "SAELatents": "sklens.units.sites",
    "NeuronSet": "sklens.units.neuron_set",
    "InitMode": "sklens.prompt.soft_prompt",
    "SoftPrompt": "sklens.prompt.soft_prompt",
    "SoftPromptConfig": "sklens.prompt.soft_prompt",
    "seed_stability": "sklens.confirm.stability",
    "MutualInfo": "sklens.stats.mutual_info",
    "compare_with_pearson": "sklens.app.statistics",
    "steering_curve": "sklens.causal.steering",
    "run_study": "sklens.app.study",
    "open_run": "sklens.app.study",
    "verdict": "sklens.app.verdict",
    "tiny_checkpoint": "sklens.models.tiny",
    "tiny_model": "sklens.models.tiny",
    "plateau": "sklens.prompt.training",
    "train_soft_prompt": "sklens.prompt.training",
}

# for type checkers and IDEs only: the same names as the two dicts above (which stay the single
# source at runtime; tests/test_packaging.py checks that the two agree). The redundant aliases mark
# each name as re-exported.
if TYPE_CHECKING:
    from sklens import data as data
    from sklens import models as models
    from sklens import stats as stats
    from sklens.allocator import hold_freed_memory as hold_freed_memory
    from sklens.app.config import CausalConfig as CausalConfig
    from sklens.app.config import ConfirmConfig as ConfirmConfig
    from sklens.app.config import ScanConfig as ScanConfig
    from sklens.app.config import SelectConfig as SelectConfig
    from sklens.app.config import StudyConfig as StudyConfig
    from sklens.app.config import TrainConfig as TrainConfig
    from sklens.app.statistics import compare_with_pearson as compare_with_pearson
    from sklens.app.study import open_run as open_run
    from sklens.app.study import run_study as run_study
    from sklens.app.verdict import verdict as verdict
    from sklens.causal import edits as edits
    from sklens.causal.ablate import NeuronIntervention as NeuronIntervention
    from sklens.causal.ablate import ablated as ablated
    from sklens.causal.ablate import ablation_hooks as ablation_hooks
    from sklens.causal.attribution import Attribution as Attribution
    from sklens.causal.attribution import attribute as attribute
    from sklens.causal.behaviour import behaviour as behaviour
    from sklens.causal.check import causal_check as causal_check
    from sklens.causal.check import dose_response as dose_response
    from sklens.causal.check import evaluate as evaluate
    from sklens.causal.check import neuron_stats as neuron_stats
    from sklens.causal.controls import random_sets as random_sets
    from sklens.causal.counterfactual import Counterfactual as Counterfactual
    from sklens.causal.counterfactual import counterfactual as counterfactual
    from sklens.causal.steering import steering_curve as steering_curve
    from sklens.confirm.contrast import Contrast as Contrast
    from sklens.confirm.contrast import contrast as contrast
    from sklens.confirm.held_out import confirm_neurons as confirm_neurons
    from sklens.confirm.held_out import held_out as held_out
    from sklens.confirm.held_out import neuron_measures as neuron_measures
    from sklens.confirm.selection import BasisTest as BasisTest
    from sklens.confirm.selection import SelectionStability as SelectionStability
    from sklens.confirm.selection import basis_test as basis_test
    from sklens.confirm.selection import selection_stability as selection_stability
    from sklens.confirm.stability import seed_stability as seed_stability
    from sklens.data.example import Example as Example
    from sklens.explanation.evidence import NeuronEvidence as NeuronEvidence
    from sklens.explanation.evidence import collect_evidence as collect_evidence
    from sklens.explanation.evidence import neuron_text_view as neuron_text_view
    from sklens.explanation.evidence import neuron_topk_view as neuron_topk_view
    from sklens.explanation.explain import Explanations as Explanations
    from sklens.explanation.explain import explain as explain
    from sklens.models.hook_check import HookMeaningError as HookMeaningError
    from sklens.models.hook_check import check_neuron_hooks as check_neuron_hooks
    from sklens.models.layout import keep_storage as keep_storage
    from sklens.models.load import SUPPORTED_ARCHITECTURES as SUPPORTED_ARCHITECTURES
    from sklens.models.load import gguf_to_checkpoint as gguf_to_checkpoint
    from sklens.models.load import load_model as load_model
    from sklens.models.protocol import Model as Model
    from sklens.models.tiny import tiny_checkpoint as tiny_checkpoint
    from sklens.models.tiny import tiny_model as tiny_model
    from sklens.prompt.soft_prompt import InitMode as InitMode
    from sklens.prompt.soft_prompt import SoftPrompt as SoftPrompt
    from sklens.prompt.soft_prompt import SoftPromptConfig as SoftPromptConfig
    from sklens.prompt.training import plateau as plateau
    from sklens.prompt.training import train_soft_prompt as train_soft_prompt
    from sklens.scanning import metrics as metrics
    from sklens.scanning.activation_cache import run_with_cache as run_with_cache
    from sklens.scanning.activations import neuron_activations as neuron_activations
    from sklens.scanning.activations import slot_activations as slot_activations
    from sklens.scanning.activations import top_examples as top_examples
    from sklens.scanning.precomputed import scan_activations as scan_activations
    from sklens.scanning.result import Scan as Scan
    from sklens.scanning.scan import scan as scan
    from sklens.scanning.sparsity import sparsity as sparsity
    from sklens.stats.moments import GroupedMoments as GroupedMoments
    from sklens.stats.moments import Moments as Moments
    from sklens.stats.mutual_info import MutualInfo as MutualInfo
    from sklens.units import sites as sites
    from sklens.units.neuron_set import NeuronSet as NeuronSet
    from sklens.units.sites import Directions as Directions
    from sklens.units.sites import SAELatents as SAELatents
    from sklens.units.sites import Site as Site
    from sklens.views import figures as figures
    from sklens.views import viz as viz
    from sklens.vocabulary import DEFAULT_MODEL as DEFAULT_MODEL

__all__ = [*_SUBMODULES, *_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'sklens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
