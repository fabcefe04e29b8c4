"""``sklens.attribute``: gradient estimates of each slot unit's ablation effect, checked against
exact patching written here as a plain TransformerLens hook (independent of
``sklens.causal.attribution``'s hooks and of ``sklens.causal.attribution_exact``)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sklens
from sklens.causal.attribution_exact import exact_effects
from sklens.data.format import encode, iter_batches
from sklens.prompt.forward import completion_logprobs
from sklens.scanning import metrics
from tests.helpers import ROOT, needs_hooked

# -- the reference: one unit ablated at each row's slot by a plain hook -------------------------


def _scores(model, prompt, examples, hooks, batch_size=4):
    """Per example: (total log-probability, mean loss) of its completion under ``hooks``, each
    a function of the batch giving ``(hook name, fn)`` pairs."""
    encoded = encode(model, examples, prompt.n_slots)
    total, loss = [], []
    with torch.no_grad(), prompt.attached(model) as writer:
        for batch in iter_batches(model, encoded, prompt.n_slots, batch_size):
            writer.start(batch)
            with model.hooks(fwd_hooks=[h for make in hooks for h in make(batch)]):
                scores = completion_logprobs(model, batch)
            total.append(scores.total_logprob.double())
            loss.append(scores.mean_loss.double())
    return torch.cat(total), torch.cat(loss)


def _slot_mean(model, prompt, examples, unit):
    """The unit's mean activation over ``examples`` at its slot, read by a plain hook."""
    layer, neuron, slot = unit
    seen = []

    def reader(batch):
        def read(act, hook):
            seen.append(act[torch.arange(act.shape[0]), batch.slot_start + slot, neuron].double())

        return [(f"blocks.{layer}.mlp.hook_post", read)]

    _scores(model, prompt, examples, [reader])
    return float(torch.cat(seen).mean())


def _setter(unit, value):
    layer, neuron, slot = unit

    def make(batch):
        def patch(act, hook):
            act = act.clone()
            act[torch.arange(act.shape[0]), batch.slot_start + slot, neuron] = value
            return act

        return [(f"blocks.{layer}.mlp.hook_post", patch)]

    return make


def _metric(name, model, prompt, examples, hooks):
    """Per-example metric: loss, logprob, or margin over ``meta['choices']``."""
    if name != "margin":
        total, loss = _scores(model, prompt, examples, hooks)
        return loss if name == "loss" else total
    out = []
    for e in examples:
        rows = [sklens.Example(e.instruction, str(c), e.meta) for c in e.meta["choices"]]
        total, _ = _scores(model, prompt, rows, hooks)
        answer = [str(c) for c in e.meta["choices"]].index(str(e.meta["answer"]))
        out.append(total[answer] - torch.cat([total[:answer], total[answer + 1 :]]).max())
    return torch.stack(out)


def by_hand(model, prompt, examples, unit, metric="loss", ablation="mean"):
    """Per-example change of the metric when ``unit`` (layer, neuron, slot) alone is ablated."""
    value = 0.0 if ablation == "zero" else _slot_mean(model, prompt, examples, unit)
    base = _metric(metric, model, prompt, examples, [])
    return _metric(metric, model, prompt, examples, [_setter(unit, value)]) - base


# -- models and data ------------------------------------------------------------------------------


def _choice_examples(n):
    """Questions with two single-token choices: the margin is the difference of two logits."""
    return [
        sklens.Example(
            f"What is {a} plus {a + 3}?",
            "3",
            {"choices": ["3", "7"] if a % 2 else ["7", "3"], "answer": "3"},
        )
        for a in range(1, n + 1)
    ]


def _planted(model, examples, scale=10.0, layer=1, neuron=7):
    """Neuron ``neuron`` of ``layer`` is on everywhere (``b_in`` 1) and writes the direction of
    the completions' first tokens' unembeddings, ``scale`` long: a unit that drives them."""
    tokens = [
        model.tokenizer(e.completion, add_special_tokens=False)["input_ids"][0] for e in examples
    ]
    direction = model.W_U[:, tokens].mean(1)
    with torch.no_grad():
        model.blocks[layer].mlp.W_out[neuron] = scale * direction / direction.norm()
        model.blocks[layer].mlp.b_in[neuron] = 1.0
    return layer, neuron


def _effects(result, units):
    return torch.stack([result.effect[u] for u in units])


# -- tests ------------------------------------------------------------------------------------------


@needs_hooked  # plants through HookedTransformer's own weights (ln_final, W_out); under TL 3 the
# bridge gives the same effects as HookedTransformer (test_a_bridge_gives_the_same_effects)
@pytest.mark.parametrize("method", ["atp", "ig"])
def test_a_unit_on_a_linear_path_gets_its_exact_effect_and_stderr(qwen, method):
    """Genuinely linear: with ``ln_final`` removed, a neuron of the *last* layer at the *last*
    slot reaches the metric only through the residual at the position that predicts the single
    completion token (no later layer reads it), and the margin between two single-token
    choices is ``z_answer − z_distractor`` (the log-sum-exp cancels), a linear function of that
    residual. So the margin is linear in the unit and every estimator must equal exact
    patching, per example too: the stderr must be the per-example exact effects' std / √n."""
    qwen.ln_final = torch.nn.Identity()
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    data = _choice_examples(10)
    result = sklens.attribute(
        qwen, prompt, data, "margin", method=method, steps=2, groups=4, batch_size=3, progress=False
    )
    last = qwen.cfg.n_layers - 1
    strongest = result.effect[last, :, 2].abs().topk(3).indices.tolist()
    for neuron in strongest:
        unit = (last, neuron, 2)
        exact = by_hand(qwen, prompt, data, unit, "margin")
        assert float(exact.abs().mean()) > 1e-3  # a real effect, not 0 == 0
        assert result.effect[unit] == pytest.approx(float(exact.mean()), abs=1e-5)
        stderr = float(exact.std() / len(data) ** 0.5)
        assert result.stderr[unit] == pytest.approx(stderr, abs=1e-5)
    # the last layer's other slots are read by nothing
    assert result.effect[last, :, :2].abs().max() < 1e-6


@pytest.mark.parametrize(
    "metric, ablation", [("loss", "mean"), ("logprob", "zero"), ("margin", "mean")]
)
def test_the_exact_patching_helper_equals_a_plain_hook(qwen, examples, metric, ablation):
    data = _choice_examples(6) if metric == "margin" else examples[:6]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    units = [(0, 5, 0), (1, 40, 2), (0, 77, 1), (1, 40, 1)]
    helper = exact_effects(qwen, prompt, data, units, metric, ablation=ablation, batch_size=5)
    assert helper.shape == (len(units), len(data))
    for row, unit in zip(helper, units, strict=True):
        torch.testing.assert_close(
            row, by_hand(qwen, prompt, data, unit, metric, ablation), atol=2e-5, rtol=0
        )


@needs_hooked  # plants through HookedTransformer's own weights (ln_final, W_out); under TL 3 the
# bridge gives the same effects as HookedTransformer (test_a_bridge_gives_the_same_effects)
@pytest.mark.parametrize("method", ["atp", "ig"])
def test_a_planted_causal_unit_ranks_first_and_a_silent_tracker_gets_zero(qwen, examples, method):
    data = examples[:12]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    tracker = sklens.scan(qwen, prompt, data, metrics.label("op", positive="plus"), progress=False)
    t_layer, t_neuron = (int(x) for x in tracker.top_k(1)[["layer", "unit"]].iloc[0])
    layer, neuron = _planted(qwen, data)
    with torch.no_grad():
        qwen.blocks[t_layer].mlp.W_out[t_neuron] = 0.0  # tracks the label, writes nothing
    last = prompt.n_slots - 1  # the slot that predicts the completion's first token
    exact = float(by_hand(qwen, prompt, data, (layer, neuron, last), "logprob", "zero").mean())
    assert exact < -1.0  # ablating it costs the completion more than a nat
    result = sklens.attribute(
        qwen, prompt, data, "logprob", method=method, ablation="zero", steps=2, progress=False
    )
    top = result.top_k(1)
    assert (int(top.layer[0]), int(top.unit[0]), int(top.slot[0])) == (layer, neuron, last)
    for ablation in ("zero", "mean"):
        silent = by_hand(qwen, prompt, data, (t_layer, t_neuron, last), "logprob", ablation)
        assert float(silent.abs().max()) < 1e-6
        if ablation == "mean":
            result = sklens.attribute(
                qwen, prompt, data, "logprob", method=method, ablation="mean", steps=2,
                progress=False,
            )  # fmt: skip
        assert result.effect[t_layer, t_neuron].abs().max() < 1e-9
    assert tracker.layer_corr(t_layer)[t_neuron].abs().max() > 0.5  # it did track the label


@needs_hooked  # plants through HookedTransformer's own weights (ln_final, W_out); under TL 3 the
# bridge gives the same effects as HookedTransformer (test_a_bridge_gives_the_same_effects)
def test_ig_beats_atp_on_a_saturating_unit(qwen, examples):
    """A planted unit strong enough to saturate the completion's probability: the gradient at
    the clean point is nearly 0 (AtP sees almost nothing) though ablating it costs nats; IG
    integrates the gradient along the way, where it is not."""
    data = examples[:12]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    layer, neuron = _planted(qwen, data, scale=30.0)
    atp = sklens.attribute(
        qwen, prompt, data, "loss", method="atp", ablation="zero", progress=False
    )
    ig = sklens.attribute(
        qwen, prompt, data, "loss", method="ig", ablation="zero", steps=8, groups=64, progress=False
    )
    ranked = atp.top_k(4, per_slot=True)[["layer", "unit", "slot"]].values
    units = [(layer, neuron, 2), *(tuple(int(x) for x in r) for r in ranked)]
    units = list(dict.fromkeys(units))
    exact = torch.stack([by_hand(qwen, prompt, data, u, "loss", "zero").mean() for u in units])
    err_atp = (_effects(atp, units) - exact).abs()
    err_ig = (_effects(ig, units) - exact).abs()
    assert err_atp.sum() > 1.0  # the case is far from linear
    assert err_ig.sum() < 0.25 * err_atp.sum()


def test_one_group_moving_every_unit_is_worse_than_groups(qwen, examples):
    """The module doc's claim: one path for all units measures them in a model with every slot
    ablated; groups shrink that interaction."""
    data = examples[:10]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    units = [(0, 69, 2), (1, 3, 2), (1, 89, 2), (0, 51, 2)]
    exact = torch.stack([by_hand(qwen, prompt, data, u, "loss", "zero").mean() for u in units])
    errors = {
        g: (_effects(sklens.attribute(
            qwen, prompt, data, "loss", method="ig", ablation="zero", steps=2, groups=g,
            progress=False,
        ), units) - exact).abs().sum()
        for g in (1, 64)
    }  # fmt: skip
    assert errors[64] < errors[1]


def _refuse_passes(model, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(model, "forward", boom)
    monkeypatch.setattr(model, "run_with_hooks", boom)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"metric": "label:op=plus"},
            r"metric='label:op=plus' is a label, not a model output.*'loss', 'logprob' or 'margin'",
        ),
        ({"metric": metrics.label("op", positive="plus")}, r"is a label, not a model output"),
        ({"metric": "confidence"}, r"metric must be 'loss', 'logprob' or 'margin'"),
        ({"metric": "margin"}, r"metric='margin' needs multiple-choice examples"),
        ({"method": "gradient"}, r"method must be one of atp, ig"),
        ({"ablation": "resample"}, r"ablation must be one of zero, mean"),
        (
            {"site": "blocks.{layer}.mlp.hook_nope"},
            r"the model has no hook 'blocks.0.mlp.hook_nope'",
        ),
        (
            {"ablation": []},
            r"ablation must be one of zero, mean, or the \(original, edited\) pairs",
        ),
        ({"steps": 0}, r"steps must be at least 1"),
        ({"groups": 0}, r"groups must be at least 1"),
        ({"n_examples": 1}, r"examples: attribution needs at least 2 examples"),
        ({"width": 32}, r"prompt has width d_model=32 but the model has d_model=64"),
        ({"world": 8}, r"gives each of the 8 ranks a share, but there are 4 examples"),
    ],
)
def test_bad_input_is_refused_before_any_pass(qwen, examples, monkeypatch, kwargs, match):
    kwargs = dict(kwargs)
    data = examples[: kwargs.pop("n_examples", 4)]
    width = kwargs.pop("width", qwen.cfg.d_model)
    world = kwargs.pop("world", 1)  # as if under torchrun with this many ranks
    monkeypatch.setattr(sklens.stats.distributed, "world_size", lambda: world)
    prompt = sklens.SoftPrompt(sklens.SoftPromptConfig(n_slots=2, d_model=width))
    _refuse_passes(qwen, monkeypatch)
    with pytest.raises(ValueError, match=match) as err:
        sklens.attribute(qwen, prompt, data, progress=False, **kwargs)
    assert "\n" not in str(err.value)


def test_top_k_is_a_neuron_table_that_causal_check_takes(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = sklens.attribute(qwen, prompt, examples[:8], method="atp", progress=False)
    table = result.top_k(3)
    scan_table = sklens.scan(qwen, prompt, examples[:8], "loss", progress=False).top_k(3)
    shared = {"layer", "unit", "slot", "site"}
    assert shared <= set(scan_table.columns) and shared <= set(table.columns)
    assert {"effect", "stderr", "lo", "hi"} <= set(table.columns)
    assert list(table.effect.abs()) == sorted(table.effect.abs(), reverse=True)
    assert (table.lo <= table.effect).all() and (table.effect <= table.hi).all()
    best = result.effect.abs().amax(-1).flatten().max()
    assert abs(table.effect[0]) == pytest.approx(float(best))
    checked = sklens.causal_check(
        qwen, prompt, examples[8:16], table, modes="zero", n_random=2, n_boot=50, progress=False
    )
    assert isinstance(checked, pd.DataFrame) and set(checked.set) == {
        "selected",
        "random_0",
        "random_1",
    }


def test_save_load_round_trip(qwen, examples, tmp_path):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.attribute(qwen, prompt, examples[:4], method="atp", progress=False)
    back = sklens.Attribution.load(result.save(tmp_path / "attribution.safetensors"))
    assert torch.equal(back.effect, result.effect) and torch.equal(back.stderr, result.stderr)
    assert back.settings == result.settings and back.selection_ids == result.selection_ids
    assert result.effect.dtype == torch.float64
    assert result.effect.shape == (qwen.cfg.n_layers, qwen.cfg.d_mlp, 2)


@needs_hooked
def test_a_bridge_gives_the_same_effects(qwen_dir, examples):
    """The HookedTransformer runs the text before the slots once without autograd; the bridge
    takes whole rows: the same numbers."""
    model = sklens.load_model(qwen_dir, backend="bridge", device="cpu")
    reference = sklens.load_model(qwen_dir, backend="hooked", device="cpu")
    prompt = sklens.SoftPrompt.init_for(model, 2, seed=0)
    data = examples[:5]
    got = sklens.attribute(model, prompt, data, "loss", method="atp", batch_size=2, progress=False)
    want = sklens.attribute(
        reference, prompt, data, "loss", method="atp", batch_size=5, progress=False
    )
    torch.testing.assert_close(got.effect, want.effect, atol=1e-6, rtol=1e-4)


def test_the_loss_metric_object_is_the_loss(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    named = sklens.attribute(qwen, prompt, examples[:4], "loss", method="atp", progress=False)
    given = sklens.attribute(
        qwen, prompt, examples[:4], metrics.loss(), method="atp", progress=False
    )
    assert torch.equal(named.effect, given.effect)


@pytest.mark.slow
def test_the_benchmark_runs_on_the_tiny_model(tmp_path):
    """``benchmarks/attribution.py`` end to end at reduced size (its numbers come from full runs)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "benchmarks" / "attribution.py"), "--model", "tiny"]
    cmd += ["--device", "cpu", "--repeats", "1", "--n-slots", "2", "--results", str(tmp_path)]
    cmd += ["--n", "6", "--n-train", "6", "--train-steps", "2", "--batch-size", "3"]
    cmd += ["--estimators", "atp,ig:2x4", "--n-top", "3", "--n-random", "3", "--per-layer", "1"]
    cmd += ["--n-low", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (table,) = tmp_path.glob("attribution-*.md")
    text = table.read_text()
    assert "command: `python benchmarks/attribution.py --model tiny" in text
    assert "| ig 2 steps × 4 groups |" in text and "× loss scan" in text
