"""The extremal examples the scan keeps equal the ones a second pass over the examples finds."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import sklens
from sklens.scanning import metrics
from sklens.stats.extremes import Extremes
from sklens.stats.slot_buffer import Block
from tests.helpers import reference_slot_acts


@pytest.mark.parametrize("block", [7, 128])  # several blocks merged, or all held at once
def test_kept_extremes_equal_the_second_pass(qwen, examples, block, monkeypatch):
    monkeypatch.setattr(importlib.import_module("sklens.scanning.scan"), "_BLOCK", block)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    result = sklens.scan(
        qwen, prompt, examples, metrics.loss(), batch_size=5, n_extremal=4, progress=False
    )
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])  # (N, L, d, k), run_with_cache
    order = np.argsort(-acts, axis=0, kind="stable")
    ex = result.extremes
    assert ex.rows.shape == (2, 4, 3, qwen.cfg.d_mlp)  # layers, rank, slot, unit

    def layout(a):  # (rank, L, d, k) -> (L, rank, k, d)
        return a.transpose(1, 0, 3, 2)

    np.testing.assert_array_equal(ex.rows.numpy(), layout(order[:4]))
    np.testing.assert_allclose(
        ex.values.numpy(), layout(np.take_along_axis(acts, order[:4], 0)), atol=1e-5
    )
    low = np.argsort(acts, axis=0, kind="stable")[:4]
    np.testing.assert_array_equal(ex.low_rows.numpy(), layout(low))

    # the table a second pass makes (sklens.top_examples) is the one the scan keeps
    top = result.top_k(3)
    for row in top.itertuples():
        for largest in (True, False):
            kept = result.top_examples(
                examples, layer=row.layer, unit=row.unit, slot=row.slot, largest=largest
            )
            again = sklens.top_examples(
                qwen,
                prompt,
                examples,
                layer=row.layer,
                unit=row.unit,
                slot=row.slot,
                n=4,
                largest=largest,
            )
            assert kept.example.tolist() == again.example.tolist()
            np.testing.assert_allclose(kept.activation, again.activation, atol=1e-5)


def test_extremes_survive_save_and_load_and_refuse_other_examples(qwen, examples, tmp_path):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    result = sklens.scan(qwen, prompt, examples, metrics.label("a"), n_extremal=2, progress=False)
    loaded = sklens.Scan.load(result.save(tmp_path / "scan.safetensors"))
    for name, tensor in result.extremes.tensors().items():
        assert torch.equal(loaded.extremes.tensors()[name], tensor), name
    with pytest.raises(ValueError, match="not the ones this scan ran on"):
        loaded.top_examples(examples[::-1], layer=0, unit=0, slot=0)
    with pytest.raises(KeyError, match="layer 5 was not scanned"):
        loaded.top_examples(examples, layer=5, unit=0, slot=0)
    d = qwen.cfg.d_mlp
    with pytest.raises(
        ValueError, match=f"unit must be in 0..{d - 1} and slot in 0..2, got unit={d}"
    ):
        loaded.top_examples(examples, layer=0, unit=d, slot=0)
    with pytest.raises(ValueError, match="n_extremal must be"):
        sklens.scan(qwen, prompt, examples, metrics.label("a"), n_extremal=-1, progress=False)
    with pytest.raises(ValueError, match="kept no extremal examples: scan\\(..., n_extremal=5\\)"):
        sklens.scan(
            qwen, prompt, examples, metrics.label("a"), n_extremal=0, progress=False
        ).top_examples(examples, layer=0, unit=0, slot=0)


def test_fewer_examples_than_places_leave_them_empty():
    kept = Extremes.empty((1, 2, 1), 5, "cpu")  # one layer, two units, one slot
    kept.take(
        Block(0, torch.tensor([[1.0, -1.0], [3.0, 0.5]]), torch.tensor([7, 9]), torch.zeros(2))
    )
    assert kept.rows[0, :, 0, 0].tolist() == [9, 7, -1, -1, -1]
    assert kept.rows[0, :, 0, 1].tolist() == [9, 7, -1, -1, -1]
    assert kept.low_rows[0, :, 0, 1].tolist() == [7, 9, -1, -1, -1]


def test_evidence_from_the_kept_extremes_equals_the_second_pass(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    result = sklens.scan(qwen, prompt, examples, metrics.label("a"), n_extremal=3, progress=False)
    top = result.top_k(4)
    kept, kept_table = sklens.collect_evidence(qwen, prompt, examples, top, n=3, kept=result)
    passed, pass_table = sklens.collect_evidence(qwen, prompt, examples, top, n=3)
    assert kept.most == passed.most and kept.least == passed.least
    assert kept.viewed == passed.viewed and kept.tokens == passed.tokens
    columns = [c for c in pass_table.columns if c != "activation"]
    assert kept_table[columns].equals(pass_table[columns])
    np.testing.assert_allclose(kept_table.activation, pass_table.activation, atol=1e-5)
    with pytest.raises(ValueError, match="kept 3 extremal examples per neuron, fewer than n=4"):
        sklens.collect_evidence(qwen, prompt, examples, top, n=4, kept=result)
