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
from typing import Any

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
    "compare_with_pearson": "sklens.stats.mutual_info",
    "steering_curve": "sklens.steering",
    "run_study": "sklens.app.study",
    "open_run": "sklens.app.study",
    "tiny_checkpoint": "sklens.models.tiny",
    "tiny_model": "sklens.models.tiny",
    "plateau": "sklens.training",
    "train_soft_prompt": "sklens.training",
}

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
