"""Python API misuse (the reliability review's section N): each call raises a TypeError or
ValueError naming the argument, before any forward pass, instead of a raw AttributeError,
LinAlgError or unpacking error, or silently doing the wrong thing."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sklens
from sklens.explanation.explain import explain
from sklens.units.neuron_set import NeuronSet
from sklens.units.sites import Directions
from tests.helpers import arithmetic_examples, without_type_checks


@pytest.fixture(autouse=True)
def as_a_user():
    """Call sklens as a user does: the suite's jaxtyping + beartype checks would refuse most of
    these calls before sklens's own checks can name the argument and the fix."""
    with without_type_checks():
        yield


class ForwardPass(Exception):
    """Raised by a model whose forward pass must not run."""


def _no_pass(model, monkeypatch):
    """Make any forward pass of ``model`` raise ``ForwardPass``."""

    def forward(*args, **kwargs):
        raise ForwardPass("a forward pass ran")

    monkeypatch.setattr(model, "forward", forward)
    return model


@pytest.fixture
def prompt(qwen):
    return sklens.SoftPrompt.init_for(qwen, 3, seed=0)


@pytest.fixture
def selected(qwen, prompt):
    """Examples, and a top-K table selected on the first 20 of them."""
    data = arithmetic_examples(40, seed=5)
    assert len({(e.instruction, e.completion) for e in data}) == len(data)
    result = sklens.scan(qwen, prompt, data[:20], sklens.metrics.label("big"), progress=False)
    return data, result, result.top_k(2)


def test_case_N3_a_zero_direction_is_refused():
    with pytest.raises(ValueError, match="vectors: direction 0 has zero norm"):
        Directions.of(torch.zeros(2, 64))
    vectors = torch.randn(3, 64)
    vectors[2] = 0
    with pytest.raises(ValueError, match="direction 2 has zero norm"):
        Directions.of(vectors)
    with pytest.raises(ValueError, match=r"vectors\[1\]: direction 0 has zero norm"):
        Directions.of({1: torch.zeros(1, 64)})


def test_case_N4_nan_directions_and_a_plain_list_are_refused():
    with pytest.raises(ValueError, match="vectors holds NaN or infinite values"):
        Directions.of(torch.full((2, 64), torch.nan))
    inf = torch.randn(2, 64)
    inf[1, 5] = torch.inf
    with pytest.raises(ValueError, match=r"NaN or infinite values \(direction 1\)"):
        Directions.of(inf)
    with pytest.raises(TypeError, match=r"vectors must be a \[n_directions, d_model\] matrix"):
        Directions.of([1.0, 2.0])
    with pytest.raises(TypeError, match="vectors must be a"):
        Directions.of("not vectors")
    # a list of lists and a NumPy array are converted: the same site as the tensor
    rows = np.random.default_rng(0).normal(size=(2, 64))
    from_tensor = Directions.of(torch.from_numpy(rows))
    for given in (rows, rows.tolist()):
        site = Directions.of(given)
        assert site.name == from_tensor.name and site.size == 2
        act = torch.randn(1, 4, 64)
        torch.testing.assert_close(site.units(act, 0), from_tensor.units(act, 0))


def test_case_N6_fractional_and_text_unit_ids_are_refused(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    with pytest.raises(
        TypeError, match=r"the layer must be a layer index \(a whole number\), got '0'"
    ):
        sklens.top_examples(qwen, prompt, examples, layer="0", unit=1)
    with pytest.raises(
        TypeError, match=r"the unit must be a unit index \(a whole number\), got 1.5"
    ):
        sklens.top_examples(qwen, prompt, examples, layer=0, unit=1.5)
    with pytest.raises(TypeError, match="the unit must be"):
        NeuronSet.of([(0, 1.5)])
    with pytest.raises(TypeError, match=r"column 'unit' must hold whole numbers, got 1.5"):
        NeuronSet.of(pd.DataFrame({"layer": [0], "unit": [1.5]}))
    with pytest.raises(TypeError, match=r"neurons\[0\] must be a list of unit ids"):
        NeuronSet.of({0: 3})
    # whole numbers of any integer type still pass; a float column of whole numbers too
    pairs = [(np.int64(1), torch.tensor(3)), (0, 2)]
    assert NeuronSet.of(pairs).pairs == ((1, 3), (0, 2))
    assert NeuronSet.of(pd.DataFrame({"layer": [1.0], "unit": [4.0]})).pairs == ((1, 4),)
    assert NeuronSet.of({1: torch.tensor([4, 2])}).pairs == ((1, 4), (1, 2))
    # the scan's own table of extremal examples refuses them too
    acts = torch.randn(10, 2, 3, 8, generator=torch.Generator().manual_seed(0))
    result = sklens.scan_activations(acts, acts[:, 0, 0, 0])
    with pytest.raises(TypeError, match="layer must be a whole number"):
        result.top_examples([], layer="0", unit=1, slot=0)
    with pytest.raises(TypeError, match="unit must be a whole number"):
        result.top_examples([], layer=0, unit=1.5, slot=0)


def test_case_N8_not_a_table_and_no_units_are_refused(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    with pytest.raises(TypeError, match=r"neurons must be a Scan.top_k table .* got str"):
        sklens.causal_check(qwen, prompt, examples, "not a table", progress=False)
    with pytest.raises(ValueError, match="neurons names no unit"):
        sklens.causal_check(qwen, prompt, examples, [], progress=False)
    with pytest.raises(ValueError, match="neurons names no unit"):
        sklens.causal_check(qwen, prompt, examples, torch.zeros(2, 128, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"neurons\[0\] is 3, not a \(layer, unit\) pair"):
        sklens.causal_check(qwen, prompt, examples, (3, 5), progress=False)


def test_case_N9_n_random_must_be_at_least_one(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    with pytest.raises(ValueError, match="n_random must be at least 1"):
        sklens.causal_check(qwen, prompt, examples, [(0, 1)], n_random=0, progress=False)
    with pytest.raises(TypeError, match="n_random must be a whole number"):
        sklens.causal_check(qwen, prompt, examples, [(0, 1)], n_random=2.5, progress=False)


def test_case_N10_one_mode_name_is_one_mode(qwen, prompt, examples, monkeypatch):
    table = sklens.causal_check(
        qwen, prompt, examples[:6], [(0, 1)], modes="zero", n_random=1, n_boot=10,
        match_scale=False, progress=False,
    )  # fmt: skip
    assert set(table["mode"]) == {"zero"} and set(table["set"]) == {"selected", "random_0"}
    _no_pass(qwen, monkeypatch)
    with pytest.raises(ValueError, match=r"modes must be one or more of .* got \['zap'\]"):
        sklens.causal_check(qwen, prompt, examples, [(0, 1)], modes="zap", progress=False)


def test_case_N11_group_by_a_missing_field_is_refused(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    with pytest.raises(
        ValueError,
        match=r"group_by='nonexistent': example 0 has no meta field 'nonexistent'; the "
        r"examples' meta fields are \['a', 'big', 'op'\]",
    ):
        sklens.causal_check(qwen, prompt, examples, [(0, 1)], group_by="nonexistent")
    some = [sklens.Example(e.instruction, e.completion, dict(e.meta)) for e in examples]
    some[3] = sklens.Example(some[3].instruction, some[3].completion, {"a": 1})
    with pytest.raises(ValueError, match="example 3 has no meta field 'op'"):
        sklens.causal_check(qwen, prompt, some, [(0, 1)], group_by="op")


def test_case_N14_explain_refuses_any_selection_example(
    qwen, prompt, selected, monkeypatch, tmp_path
):
    data, result, top = selected
    assert len(top.attrs["selection_ids"]) == 20
    _no_pass(qwen, monkeypatch)
    for given, count in (
        (data[19::-1], "20 of the 20"),  # reversed
        (data[10:30], "10 of the 20"),  # half selection, half held out
        (data[25:40] + [data[3]], "1 of the 16"),  # one selection example among held-out ones
    ):
        with pytest.raises(ValueError, match=f"{count} examples given .* selected the units"):
            explain(qwen, prompt, given, top, progress=False)
    # the identities survive Scan.save / Scan.load
    loaded = sklens.Scan.load(result.save(tmp_path / "scan.safetensors"))
    with pytest.raises(ValueError, match="5 of the 15 examples given"):
        explain(qwen, prompt, data[15:30], loaded.top_k(2), progress=False)
    # held-out examples pass the guard (and the pass starts)
    with pytest.raises(ForwardPass):
        explain(qwen, prompt, data[20:], top, progress=False)
    # a table read back from CSV has no attrs: a warning, not a refusal
    top.to_csv(tmp_path / "top.csv", index=False)
    from_csv = pd.read_csv(tmp_path / "top.csv")
    with pytest.warns(UserWarning, match="explain cannot check that these examples are held out"):
        with pytest.raises(ForwardPass):
            explain(qwen, prompt, data[:20], from_csv, progress=False)


def test_case_N16_explain_with_swapped_arguments(qwen, prompt, selected, monkeypatch):
    data, _, top = selected
    _no_pass(qwen, monkeypatch)
    with pytest.raises(
        TypeError,
        match=r"prompt must be a sklens.SoftPrompt, got list: these look like the examples",
    ):
        explain(qwen, data[20:], prompt, top, progress=False)
    with pytest.raises(TypeError, match="model must be a model from sklens.load_model"):
        explain(prompt, qwen, data[20:], top, progress=False)


def test_case_N17_confirm_neurons_refuses_selection_examples(qwen, prompt, selected, monkeypatch):
    data, _, top = selected
    _no_pass(qwen, monkeypatch)
    metric = sklens.metrics.label("big")
    with pytest.raises(ValueError, match="20 of the 20 examples given .* selected the units"):
        sklens.confirm_neurons(qwen, prompt, data[:20], metric, top, progress=False)
    with pytest.raises(ValueError, match="4 of the 8 examples given"):
        sklens.confirm_neurons(qwen, prompt, data[16:24], metric, top, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table with its attrs: checked, no warning
        with pytest.raises(ForwardPass):
            sklens.confirm_neurons(qwen, prompt, data[20:], metric, top, progress=False)


def test_case_N18_factors_as_a_string_is_refused(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    with pytest.raises(
        TypeError,
        match=r"factors must be a sequence of numbers, got str '0,2': e.g. factors=\(0, 2\)",
    ):
        sklens.steering_curve(qwen, prompt, examples, [(0, 1)], factors="0,2")
    with pytest.raises(TypeError, match=r"factors must be numbers, got '2'"):
        sklens.steering_curve(qwen, prompt, examples, [(0, 1)], factors=(0, "2"))


def test_case_N20_wrong_types_name_the_argument(qwen, prompt, examples, monkeypatch):
    _no_pass(qwen, monkeypatch)
    metric = sklens.metrics.label("big")
    with pytest.raises(TypeError, match="prompt must be a sklens.SoftPrompt or None, got str"):
        sklens.scan(qwen, "not a prompt", examples, metric)
    with pytest.raises(TypeError, match="model must be a model from sklens.load_model.* got str"):
        sklens.scan("not a model", prompt, examples, metric)
    with pytest.raises(TypeError, match=r"examples must be a list of sklens.Example, got one"):
        sklens.scan(qwen, prompt, examples[0], metric)
    with pytest.raises(TypeError, match="model must be a model from sklens.load_model.* got str"):
        sklens.train_soft_prompt("not a model", examples, steps=1)
    with pytest.raises(TypeError, match="steps must be a whole number, got '5'"):
        sklens.train_soft_prompt(qwen, examples, steps="5")
    with pytest.raises(TypeError, match="val_examples must be a list of sklens.Example"):
        sklens.train_soft_prompt(qwen, examples, steps=1, val_examples=examples[0])
    with pytest.raises(TypeError, match="name_or_path must be a model name .* got int"):
        sklens.load_model(123)


def test_case_N23_a_scan_file_with_nan_moments_is_refused(tmp_path):
    acts = torch.randn(12, 2, 3, 8, generator=torch.Generator().manual_seed(0))
    path = sklens.scan_activations(acts, acts[:, 1, 2, 5]).save(tmp_path / "scan.safetensors")
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    tensors["c_am"] = torch.full_like(tensors["c_am"], torch.nan)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(
        ValueError, match=r"scan.safetensors is not a readable sklens scan .*c_am holds 48 NaN"
    ):
        sklens.Scan.load(path)
    assert json.loads(metadata["sklens"])["n_examples"] == 12


def test_n_constant_counts_units_that_never_vary():
    acts = torch.randn(30, 2, 3, 8, generator=torch.Generator().manual_seed(1))
    acts[:, 1, :, 4] = 0.5  # a dead unit: constant at every slot
    acts[:, 0, 2, 6] = -1.0  # constant at one slot only
    metric = acts[:, 1, 0, 4] + acts[:, 0, 0, 0]
    result = sklens.scan_activations(acts, metric)
    assert result.n_constant == 3 + 1
    assert int(result.corr.isnan().sum()) == result.n_constant
    top = result.top_k(16)
    assert len(top) == 15 and (1, 4) not in set(zip(top.layer, top.unit, strict=True))
    assert not top["score"].isna().any()
