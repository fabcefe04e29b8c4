"""sklens: find skill neurons in language models (Zhao et al. 2025, arXiv 2511.21610).

Train a soft prompt on a frozen TransformerLens model, correlate every MLP neuron's activation at
the prompt's slots with an auxiliary metric, and inspect the neurons that track it.
"""

from sklens import confirm, data, figures, measures, metrics, stability, viz
from sklens.ablate import NeuronIntervention, ablated, ablation_hooks
from sklens.activations import neuron_activations, slot_activations, top_examples
from sklens.causal import causal_check, dose_response, evaluate, neuron_stats, random_sets
from sklens.confirm import confirm_neurons, held_out
from sklens.data.example import Example
from sklens.hook_check import HookMeaningError, check_neuron_hooks
from sklens.models import DEFAULT_MODEL, SUPPORTED_ARCHITECTURES, gguf_to_checkpoint, load_model
from sklens.moments import GroupedMoments, Moments
from sklens.precomputed import scan_activations
from sklens.result import Scan
from sklens.scan import scan
from sklens.soft_prompt import InitMode, SoftPrompt, SoftPromptConfig
from sklens.stability import seed_stability
from sklens.study import StudyConfig, run_study
from sklens.tiny import tiny_checkpoint, tiny_model
from sklens.training import plateau, train_soft_prompt
from sklens.version import __version__

__all__ = [
    "confirm",
    "figures",
    "held_out",
    "confirm_neurons",
    "GroupedMoments",
    "scan_activations",
    "plateau",
    "measures",
    "seed_stability",
    "stability",
    "viz",
    "NeuronIntervention",
    "ablated",
    "ablation_hooks",
    "causal_check",
    "dose_response",
    "evaluate",
    "neuron_stats",
    "random_sets",
    "DEFAULT_MODEL",
    "StudyConfig",
    "data",
    "run_study",
    "SUPPORTED_ARCHITECTURES",
    "Example",
    "HookMeaningError",
    "InitMode",
    "Moments",
    "Scan",
    "SoftPrompt",
    "SoftPromptConfig",
    "__version__",
    "check_neuron_hooks",
    "gguf_to_checkpoint",
    "load_model",
    "metrics",
    "neuron_activations",
    "scan",
    "slot_activations",
    "tiny_checkpoint",
    "tiny_model",
    "top_examples",
    "train_soft_prompt",
]
