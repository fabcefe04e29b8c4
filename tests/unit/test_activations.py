"""Selected-neuron activations and extremal examples against run_with_cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

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
            ref[row.example, row.layer, row.unit, row.slot], abs=1e-5
        )


def test_top_examples_are_the_extremes(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=4)
    ref = reference_slot_acts(qwen, prompt, examples, [1])[:, 0, 9]  # (N, k)
    most = sklens.top_examples(qwen, prompt, examples, layer=1, unit=9, n=5, slot=2)
    least = sklens.top_examples(qwen, prompt, examples, layer=1, unit=9, n=5, largest=False)
    assert list(most.example) == list(np.argsort(-ref[:, 2])[:5])
    assert list(least.example) == list(np.argsort(ref.mean(-1))[:5])
    assert {"rank", "activation", "instruction", "completion", "meta.op", "meta.big"} <= set(
        most.columns
    )
    assert most.instruction.iloc[0] == examples[int(most.example.iloc[0])].instruction


def test_neuron_errors(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3)
    with pytest.raises(ValueError, match=r"unit \(5, 0\) is outside the model"):
        sklens.neuron_activations(qwen, prompt, examples, [(5, 0)])
    with pytest.raises(ValueError, match="slot must be in 0..2"):
        sklens.top_examples(qwen, prompt, examples, layer=0, unit=0, slot=3)
    with pytest.raises(ValueError, match="n must be at least 1, got -1"):
        sklens.top_examples(qwen, prompt, examples, layer=0, unit=0, n=-1)


def test_every_neuron_form_is_one_neuron_set(qwen, examples):
    """A top_k table, pairs, a {layer: ids} dict, a bool mask and a NeuronSet name the same
    neurons everywhere (a mask used to work for interventions only); order follows the input.
    A hand-built table may call its unit column ``neuron``."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=4)
    pairs = [(0, 17), (1, 5), (1, 100)]
    mask = torch.zeros(qwen.cfg.n_layers, qwen.cfg.d_mlp, dtype=torch.bool)
    mask[0, 17] = mask[1, 5] = mask[1, 100] = True
    forms = [
        pairs,
        pd.DataFrame({"layer": [0, 1, 1], "unit": [17, 5, 100], "corr": [0.1, 0.2, 0.3]}),
        pd.DataFrame({"layer": [0, 1, 1], "neuron": [17, 5, 100]}),
        {0: [17], 1: [5, 100]},
        mask,
        sklens.NeuronSet(tuple(pairs)),
    ]
    ref = reference_slot_acts(qwen, prompt, examples[:6], [0, 1])  # (N, L, d, k)
    expected = torch.stack([torch.as_tensor(ref[:, L, i]) for L, i in pairs], 1).float()
    for form in forms:
        assert sklens.NeuronSet.of(form, qwen).pairs == tuple(pairs)
        acts = sklens.slot_activations(qwen, prompt, examples[:6], form)
        torch.testing.assert_close(acts, expected, atol=1e-5, rtol=0)
    flipped = sklens.NeuronSet.of([(1, 100), (0, 17), (1, 100)])
    assert flipped.labels() == ["L1 N100", "L0 N17", "L1 N100"]
    assert {L: ids.tolist() for L, ids in flipped.by_layer().items()} == {0: [17], 1: [100]}
    with pytest.raises(ValueError, match=r"a neuron mask must be bool \[2, "):
        sklens.NeuronSet.of(mask.float(), qwen)
    with pytest.raises(ValueError, match="the unit table needs a 'unit' column"):
        sklens.NeuronSet.of(pd.DataFrame({"layer": [0]}))
    with pytest.raises(ValueError, match="the unit table needs a 'layer' column"):
        sklens.NeuronSet.of(pd.DataFrame({"unit": [0]}))
    with pytest.raises(ValueError, match="both a 'unit' and a 'neuron' column"):
        sklens.NeuronSet.of(pd.DataFrame({"layer": [0], "unit": [1], "neuron": [1]}))
