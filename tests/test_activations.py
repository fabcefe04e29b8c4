"""Selected-neuron activations and extremal examples against run_with_cache."""

from __future__ import annotations

import numpy as np
import pytest

import sklens
from tests.helpers import reference_slot_acts


def test_neuron_activations_match_run_with_cache(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=4)
    neurons = [(1, 5), (0, 17), (1, 100)]
    table = sklens.neuron_activations(qwen, prompt, examples[:10], neurons, batch_size=3)
    ref = reference_slot_acts(qwen, prompt, examples[:10], [0, 1])  # (N, L, d, k)
    assert len(table) == 10 * 3 * 3
    for row in table.itertuples():
        assert row.activation == pytest.approx(
            ref[row.example, row.layer, row.neuron, row.position], abs=1e-5
        )


def test_top_examples_are_the_extremes(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=4)
    ref = reference_slot_acts(qwen, prompt, examples, [1])[:, 0, 9]  # (N, k)
    most = sklens.top_examples(qwen, prompt, examples, layer=1, neuron=9, n=5, position=2)
    least = sklens.top_examples(qwen, prompt, examples, layer=1, neuron=9, n=5, largest=False)
    assert list(most.example) == list(np.argsort(-ref[:, 2])[:5])
    assert list(least.example) == list(np.argsort(ref.mean(-1))[:5])
    assert {"rank", "activation", "instruction", "completion", "meta.op", "meta.big"} <= set(
        most.columns
    )
    assert most.instruction.iloc[0] == examples[int(most.example.iloc[0])].instruction


def test_neuron_errors(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3)
    with pytest.raises(ValueError, match=r"neuron \(5, 0\) is outside the model"):
        sklens.neuron_activations(qwen, prompt, examples, [(5, 0)])
    with pytest.raises(ValueError, match="position must be in 0..2"):
        sklens.top_examples(qwen, prompt, examples, layer=0, neuron=0, position=3)
    with pytest.raises(ValueError, match="n must be at least 1, got -1"):
        sklens.top_examples(qwen, prompt, examples, layer=0, neuron=0, n=-1)
