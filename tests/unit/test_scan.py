"""The scan against independent computations, planted neurons, ranking rules and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sklens
from sklens.scanning import metrics
from tests.helpers import corrcoef_rows, reference_losses, reference_slot_acts


@pytest.fixture
def prompt(qwen):
    return sklens.SoftPrompt.init_for(qwen, 4, seed=0)


@pytest.mark.parametrize("model_name", ["qwen", "llama"])
def test_corr_equals_numpy_corrcoef_on_run_with_cache(model_name, request, examples):
    model = request.getfixturevalue(model_name)
    prompt = sklens.SoftPrompt.init_for(model, 4, seed=0)
    result = sklens.scan(model, prompt, examples, metrics.label("a"), batch_size=5, progress=False)
    acts = reference_slot_acts(model, prompt, examples, [0, 1])
    expected = corrcoef_rows(acts, np.array([e.meta["a"] for e in examples], dtype=float))
    assert result.corr.shape == (2, model.cfg.d_mlp, 4)
    assert np.nanmax(np.abs(result.corr.numpy() - expected)) <= 1e-5
    assert np.array_equal(np.isnan(result.corr.numpy()), np.isnan(expected))


def test_loss_metric_comes_from_the_same_pass_and_matches_full_logits(qwen, prompt, examples):
    result = sklens.scan(qwen, prompt, examples, metrics.loss(), batch_size=6, progress=False)
    losses = reference_losses(qwen, prompt, examples)
    assert np.abs(result.metric_values.numpy() - losses).max() <= 1e-4
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])
    assert np.nanmax(np.abs(result.corr.numpy() - corrcoef_rows(acts, losses))) <= 1e-4


def test_confidence_is_the_completion_probability(qwen, prompt, examples):
    result = sklens.scan(qwen, prompt, examples[:8], metrics.confidence(), progress=False)
    losses = reference_losses(qwen, prompt, examples[:8])
    lengths = np.array([len(qwen.tokenizer.encode(e.completion)) for e in examples[:8]])
    np.testing.assert_allclose(result.metric_values.numpy(), np.exp(-losses * lengths), rtol=1e-4)


@pytest.mark.parametrize("trial", range(4))
def test_planted_neuron_ranks_first(qwen, examples, trial):
    rng = np.random.default_rng(trial)
    prompt = sklens.SoftPrompt.init_for(qwen, 4, seed=trial)
    layer, neuron, pos = (
        int(rng.integers(2)),
        int(rng.integers(qwen.cfg.d_mlp)),
        int(rng.integers(4)),
    )
    acts = sklens.slot_activations(qwen, prompt, examples, [(layer, neuron)])[:, 0, pos].double()
    noise = torch.from_numpy(rng.normal(size=len(examples))) * acts.std() * 0.3
    planted = (acts + noise).tolist()
    result = sklens.scan(qwen, prompt, examples, planted, progress=False)
    for reduce in ("max", "absmax"):
        top = result.top_k(1, reduce=reduce).iloc[0]
        assert (top.layer, top.unit, top.slot) == (layer, neuron, pos)
        assert top.score > 0.9


def test_ranking_rules_differ_as_documented(qwen, prompt, examples):
    result = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    corr = result.corr
    score_max, pos_max = result.scores("max")
    score_abs, pos_abs = result.scores("absmax")
    torch.testing.assert_close(score_max, corr.max(-1).values)
    torch.testing.assert_close(score_abs.abs(), corr.abs().max(-1).values)
    top = result.top_k(10, reduce="absmax")
    assert list(top.score.abs()) == sorted(top.score.abs(), reverse=True)
    for row in top.itertuples():
        assert row.corr == pytest.approx(corr[row.layer, row.unit, row.slot].item())
    # a planted anti-correlated neuron: the symmetric rule ranks it first, the paper's rule need not
    planted = (-sklens.slot_activations(qwen, prompt, examples, [(1, 7)])[:, 0, 2]).tolist()
    anti = sklens.scan(qwen, prompt, examples, planted, progress=False)
    top_abs = anti.top_k(1, reduce="absmax").iloc[0]
    assert (top_abs.layer, top_abs.unit, top_abs.slot) == (1, 7, 2)
    assert top_abs.score == pytest.approx(-1.0, abs=1e-6)
    paper = anti.scores("max")[0][1, 7]
    assert paper > -1.0 + 1e-3  # the max over positions is the least negative r


def test_layer_subset(qwen, prompt, examples):
    full = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    part = sklens.scan(qwen, prompt, examples, metrics.label("a"), layers=[1], progress=False)
    assert part.corr.shape[0] == 1 and part.layers == [1]
    torch.testing.assert_close(part.corr[0], full.corr[1], equal_nan=True)
    assert set(part.top_k(5).layer) == {1}
    with pytest.raises(ValueError, match="subset of 0..1"):
        sklens.scan(qwen, prompt, examples, metrics.label("a"), layers=[2], progress=False)


def test_bridge_and_hooked_agree(qwen_dir, examples):
    hooked = sklens.load_model(qwen_dir, device="cpu")
    bridge = sklens.load_model(qwen_dir, backend="bridge", device="cpu")
    prompt = sklens.train_soft_prompt(hooked, examples[:16], n_slots=3, steps=3, progress=False)
    prompt_b = sklens.train_soft_prompt(bridge, examples[:16], n_slots=3, steps=3, progress=False)
    torch.testing.assert_close(prompt.embedding, prompt_b.embedding, rtol=0, atol=1e-5)
    a = sklens.scan(hooked, prompt, examples, metrics.loss(), progress=False)
    b = sklens.scan(bridge, prompt, examples, metrics.loss(), progress=False)
    assert (a.corr - b.corr).abs().nan_to_num().max() <= 1e-4
    assert (a.metric_values - b.metric_values).abs().max() <= 1e-5


def test_save_load_roundtrip_and_corruption(qwen, prompt, examples, tmp_path):
    result = sklens.scan(
        qwen, prompt, examples, metrics.label("op", positive="plus"), progress=False
    )
    path = result.save(tmp_path / "scan.safetensors")
    loaded = sklens.Scan.load(path)
    assert torch.equal(loaded.corr.nan_to_num(9.0), result.corr.nan_to_num(9.0))  # bit for bit
    assert loaded.settings == result.settings and loaded.n == len(examples)
    assert loaded.top_k(5).equals(result.top_k(5))
    assert "Top 10 units" in loaded._repr_html_()
    assert loaded.settings.metric == result.settings.metric and loaded.layers == [0, 1]
    with safe_open(str(path), "pt") as fh:
        header = json.loads(fh.metadata()["sklens"])
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(path)), str(edited), {"sklens": json.dumps({**header, "bogus": 1})})
    with pytest.raises(ValueError, match=r"settings this sklens does not know: \['bogus'\]"):
        sklens.Scan.load(edited)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable sklens scan"):
        sklens.Scan.load(path)


def test_bad_inputs_get_clear_errors(qwen, prompt, examples):
    def run(exs, metric):
        return sklens.scan(qwen, prompt, exs, metric, progress=False)

    with pytest.raises(ValueError, match="at least 3 examples"):
        run(examples[:2], metrics.label("a"))
    with pytest.raises(ValueError, match="constant"):
        run(examples, [1.0] * len(examples))
    with pytest.raises(ValueError, match="NaN or infinite for 1 example.*indices 3"):
        run(examples, [float("nan") if i == 3 else float(i) for i in range(len(examples))])
    with pytest.raises(ValueError, match="has 5 values but there are 48 examples"):
        run(examples, [1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="no meta field 'skill'"):
        run(examples, metrics.label("skill"))
    with pytest.raises(ValueError, match="not a number; pass positive="):
        run(examples, metrics.label("op"))
    with pytest.raises(ValueError, match="d_model=32"):
        sklens.scan(
            qwen,
            sklens.SoftPrompt(sklens.SoftPromptConfig(3, 32)),
            examples,
            metrics.label("a"),
            progress=False,
        )


def test_slots_that_cannot_see_the_example_are_an_error(qwen, prompt):
    # every example-specific token after the slots: the instruction is shared, the input is not
    same = [sklens.Example("Answer the question.", f"{i} plus {i}", {"i": i}) for i in range(6)]
    with pytest.raises(ValueError, match="slot activations are the same for every example"):
        sklens.scan(qwen, prompt, same, metrics.label("i"), progress=False)


def test_scan_memory_does_not_hold_activations(qwen, prompt, examples):
    result = sklens.scan(qwen, prompt, examples, metrics.loss(), batch_size=4, progress=False)
    held = sum(t.numel() for t in result.moments.tensors().values())
    assert held == 3 * 2 * qwen.cfg.d_mlp * 4 + 3  # moments only, independent of N


def test_load_refuses_tensors_that_disagree_with_the_settings(qwen, prompt, examples, tmp_path):
    """A file with intact framing but mis-shaped tensors (or no scan at all) is refused, naming
    the file, instead of broadcasting into r = 1.0."""
    path = sklens.scan(
        qwen, prompt, examples, metrics.label("a"), n_permutations=3, progress=False
    ).save(tmp_path / "scan.safetensors")
    tensors = load_file(path)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    for name, bad in (
        ("c_am", tensors["c_am"][:1].contiguous()),  # the probe's case: one layer of two
        ("metric_values", tensors["metric_values"][:-1].contiguous()),
        ("null_perms", tensors["null_perms"][:, :-1].contiguous()),
        ("mean_m", tensors["mean_m"].float()),
    ):
        save_file({**tensors, name: bad}, str(tmp_path / "bad.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match=rf"bad.safetensors is not a readable .*{name} has"):
            sklens.Scan.load(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(ValueError, match="nometa.safetensors .*without sklens settings"):
        sklens.Scan.load(tmp_path / "nometa.safetensors")


def test_a_metric_spec_string_is_the_metric_it_names(qwen, prompt, examples):
    """One parser for metric specs: scan, causal_check and the CLI read 'loss' and
    'label:KEY=VALUE' alike (scan used to raise a TypeError on a string)."""
    by_spec = sklens.scan(qwen, prompt, examples, "label:op=plus", progress=False)
    by_object = sklens.scan(
        qwen, prompt, examples, metrics.label("op", positive="plus"), progress=False
    )
    assert torch.equal(by_spec.corr.nan_to_num(), by_object.corr.nan_to_num())
    assert metrics.from_spec("loss").name == metrics.loss().name
    with pytest.raises(ValueError, match="unknown metric 'los'"):
        sklens.scan(qwen, prompt, examples, "los", progress=False)


def test_layer_corr_indexes_by_model_layer(qwen, examples):
    """A scan of layer 1 only: ``corr[0]`` is model layer 1, and ``layer_corr(1)`` says so."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    full = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    one = sklens.scan(qwen, prompt, examples, metrics.label("a"), layers=[1], progress=False)
    assert one.corr.shape[0] == 1
    torch.testing.assert_close(one.layer_corr(1), full.corr[1], equal_nan=True)
    torch.testing.assert_close(full.layer_corr(1), full.corr[1], equal_nan=True)
    with pytest.raises(KeyError, match=r"layer 0 was not scanned; this scan has layers \[1\]"):
        one.layer_corr(0)


def test_absmax_selection_does_not_depend_on_which_class_is_coded_1(qwen, examples):
    """The review's point: the signed max rule picks other units when the label's coding flips;
    the absmax rule picks the same units at the same slots with the same |score|."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=2)
    plus = sklens.scan(qwen, prompt, examples, "label:op=plus", progress=False)
    minus = sklens.scan(qwen, prompt, examples, "label:op=minus", progress=False)
    torch.testing.assert_close(plus.corr, -minus.corr)
    a, b = plus.top_k(10, reduce="absmax"), minus.top_k(10, reduce="absmax")
    assert a[["layer", "unit", "slot"]].equals(b[["layer", "unit", "slot"]])
    np.testing.assert_allclose(a.score.abs(), b.score.abs())
    signed = set(zip(plus.top_k(10).unit, plus.top_k(10).layer, strict=True))
    flipped = set(zip(minus.top_k(10).unit, minus.top_k(10).layer, strict=True))
    assert signed != flipped  # the signed rule's selection moved with the coding
