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
import sys
import types
from typing import TYPE_CHECKING, Any

from sklens.version import __version__

# public submodules by attribute name; measures, stability and confirm keep their old names
_SUBMODULES = {
    "data": "sklens.data",
    "edits": "sklens.edits",
    "figures": "sklens.figures",
    "metrics": "sklens.metrics",
    "viz": "sklens.viz",
    "stats": "sklens.stats",
    "models": "sklens.models",
    "sites": "sklens.sites",
    "measures": "sklens.stats.measures",
    "stability": "sklens.stats.stability",
    "confirm": "sklens.stats.held_out",
}
_EXPORTS = {
    "NeuronIntervention": "sklens.ablate",
    "ablated": "sklens.ablate",
    "ablation_hooks": "sklens.ablate",
    "run_with_cache": "sklens.activation_cache",
    "Attribution": "sklens.attribution",
    "attribute": "sklens.attribution",
    "hold_freed_memory": "sklens.allocator",
    "neuron_activations": "sklens.activations",
    "slot_activations": "sklens.activations",
    "top_examples": "sklens.activations",
    "causal_check": "sklens.causal",
    "Counterfactual": "sklens.counterfactual",
    "counterfactual": "sklens.counterfactual",
    "Explanations": "sklens.explain",
    "explain": "sklens.explain",
    "dose_response": "sklens.causal",
    "evaluate": "sklens.causal",
    "neuron_stats": "sklens.causal",
    "NeuronEvidence": "sklens.evidence",
    "collect_evidence": "sklens.evidence",
    "neuron_text_view": "sklens.evidence",
    "neuron_topk_view": "sklens.evidence",
    "random_sets": "sklens.causal",
    "DEFAULT_MODEL": "sklens.config",
    "StudyConfig": "sklens.config",
    "confirm_neurons": "sklens.stats.held_out",
    "held_out": "sklens.stats.held_out",
    "Example": "sklens.data.example",
    "HookMeaningError": "sklens.models.hook_check",
    "check_neuron_hooks": "sklens.models.hook_check",
    "SUPPORTED_ARCHITECTURES": "sklens.models.load",
    "gguf_to_checkpoint": "sklens.models.load",
    "load_model": "sklens.models.load",
    "Model": "sklens.models.protocol",
    "GroupedMoments": "sklens.moments",
    "Moments": "sklens.moments",
    "scan_activations": "sklens.precomputed",
    "Scan": "sklens.result",
    "scan": "sklens.scan",
    "Site": "sklens.sites",
    "Directions": "sklens.sites",
    "SAELatents": "sklens.sites",
    "NeuronSet": "sklens.neurons",
    "InitMode": "sklens.soft_prompt",
    "SoftPrompt": "sklens.soft_prompt",
    "SoftPromptConfig": "sklens.soft_prompt",
    "seed_stability": "sklens.stats.stability",
    "MutualInfo": "sklens.stats.mutual_info",
    "compare_with_pearson": "sklens.app.statistics",
    "steering_curve": "sklens.steering",
    "run_study": "sklens.app.study",
    "open_run": "sklens.app.study",
    "tiny_checkpoint": "sklens.models.tiny",
    "tiny_model": "sklens.models.tiny",
    "plateau": "sklens.training",
    "train_soft_prompt": "sklens.training",
}

# for type checkers and IDEs only: the same names as the two dicts above (which stay the single
# source at runtime; tests/test_packaging.py checks that the two agree). The redundant aliases mark
# each name as re-exported.
if TYPE_CHECKING:
    from sklens import data as data
    from sklens import edits as edits
    from sklens import figures as figures
    from sklens import metrics as metrics
    from sklens import models as models
    from sklens import sites as sites
    from sklens import stats as stats
    from sklens import viz as viz
    from sklens.ablate import NeuronIntervention as NeuronIntervention
    from sklens.ablate import ablated as ablated
    from sklens.ablate import ablation_hooks as ablation_hooks
    from sklens.activation_cache import run_with_cache as run_with_cache
    from sklens.activations import neuron_activations as neuron_activations
    from sklens.activations import slot_activations as slot_activations
    from sklens.activations import top_examples as top_examples
    from sklens.allocator import hold_freed_memory as hold_freed_memory
    from sklens.app.statistics import compare_with_pearson as compare_with_pearson
    from sklens.app.study import open_run as open_run
    from sklens.app.study import run_study as run_study
    from sklens.attribution import Attribution as Attribution
    from sklens.attribution import attribute as attribute
    from sklens.causal import causal_check as causal_check
    from sklens.causal import dose_response as dose_response
    from sklens.causal import evaluate as evaluate
    from sklens.causal import neuron_stats as neuron_stats
    from sklens.causal import random_sets as random_sets
    from sklens.config import DEFAULT_MODEL as DEFAULT_MODEL
    from sklens.config import StudyConfig as StudyConfig
    from sklens.counterfactual import Counterfactual as Counterfactual
    from sklens.counterfactual import counterfactual as counterfactual
    from sklens.data.example import Example as Example
    from sklens.evidence import NeuronEvidence as NeuronEvidence
    from sklens.evidence import collect_evidence as collect_evidence
    from sklens.evidence import neuron_text_view as neuron_text_view
    from sklens.evidence import neuron_topk_view as neuron_topk_view
    from sklens.explain import Explanations as Explanations
    from sklens.explain import explain as explain
    from sklens.models.hook_check import HookMeaningError as HookMeaningError
    from sklens.models.hook_check import check_neuron_hooks as check_neuron_hooks
    from sklens.models.load import SUPPORTED_ARCHITECTURES as SUPPORTED_ARCHITECTURES
    from sklens.models.load import gguf_to_checkpoint as gguf_to_checkpoint
    from sklens.models.load import load_model as load_model
    from sklens.models.protocol import Model as Model
    from sklens.models.tiny import tiny_checkpoint as tiny_checkpoint
    from sklens.models.tiny import tiny_model as tiny_model
    from sklens.moments import GroupedMoments as GroupedMoments
    from sklens.moments import Moments as Moments
    from sklens.neurons import NeuronSet as NeuronSet
    from sklens.precomputed import scan_activations as scan_activations
    from sklens.result import Scan as Scan
    from sklens.scan import scan as scan
    from sklens.sites import Directions as Directions
    from sklens.sites import SAELatents as SAELatents
    from sklens.sites import Site as Site
    from sklens.soft_prompt import InitMode as InitMode
    from sklens.soft_prompt import SoftPrompt as SoftPrompt
    from sklens.soft_prompt import SoftPromptConfig as SoftPromptConfig
    from sklens.stats import held_out as _held_out_module
    from sklens.stats import measures as measures
    from sklens.stats import stability as stability
    from sklens.stats.held_out import confirm_neurons as confirm_neurons
    from sklens.stats.held_out import held_out as held_out
    from sklens.stats.mutual_info import MutualInfo as MutualInfo
    from sklens.stats.stability import seed_stability as seed_stability
    from sklens.steering import steering_curve as steering_curve
    from sklens.training import plateau as plateau
    from sklens.training import train_soft_prompt as train_soft_prompt

    # the submodule under its old name: an assignment, since pyright would take a renaming import
    # for a private one
    confirm = _held_out_module

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


class _Package(types.ModuleType):
    """Keeps ``sklens.scan`` the function: the first import of the submodule ``sklens.scan``
    would otherwise rebind the package attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
