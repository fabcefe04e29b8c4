"""Ablation hooks against hand computations; random controls; the causal check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sklens
from sklens.causal.ablate import NeuronIntervention, ablated, ablation_hooks
from sklens.causal.check import causal_check, dose_response, evaluate, neuron_stats
from sklens.causal.controls import RandomUnits, random_sets
from sklens.data.format import encode, iter_batches
from sklens.prompt.forward import gather_slots
from sklens.scanning.choices import score_examples
from sklens.stats import rank_p
from sklens.units.neuron_set import NeuronSet
from tests.helpers import (
    reference_cache,
    reference_slot_acts,
    reference_tokens,
    without_type_checks,
)

NAMES = ["blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]


def _batch(model, examples, n_slots=0):
    return next(iter_batches(model, encode(model, examples, n_slots), n_slots, len(examples)))


def _run(model, batch, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        logits, cache = model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask, names_filter=lambda n: n in NAMES
        )
    return logits, cache


def test_empty_set_and_empty_mask_change_nothing_bitwise(qwen, examples):
    batch = _batch(qwen, examples[:4])
    base, _ = _run(qwen, batch)
    assert NeuronSet.of([], qwen).by_layer() == {}
    empty, _ = _run(qwen, batch, ablation_hooks(qwen, []))
    assert torch.equal(empty, base)
    nowhere = torch.zeros(batch.tokens.shape, dtype=torch.bool)
    masked, _ = _run(qwen, batch, ablation_hooks(qwen, [(1, 3), (0, 5)], "zero", positions=nowhere))
    assert torch.equal(masked, base)


@pytest.mark.parametrize("mode", ["zero", "mean", "scale", "shift"])
def test_edits_match_a_hand_computation(qwen, examples, mode):
    batch = _batch(qwen, examples[:3])
    ids = torch.tensor([2, 40, 77])
    means = {1: torch.linspace(-1, 1, qwen.cfg.d_mlp)}
    opts = {"means": means, "factor": 3.0, "shift": -0.5}
    _, base = _run(qwen, batch)
    _, cache = _run(qwen, batch, ablation_hooks(qwen, [(1, int(i)) for i in ids], mode, **opts))
    post0, post = base["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_post"]
    expected = post0.clone()
    expected[..., ids] = {
        "zero": torch.zeros_like(post0[..., ids]),
        "mean": means[1][ids].expand_as(post0[..., ids]),
        "scale": post0[..., ids] * 3.0,
        "shift": post0[..., ids] - 0.5,
    }[mode]
    torch.testing.assert_close(post, expected)
    mlp = qwen.blocks[1].mlp
    torch.testing.assert_close(
        cache["blocks.1.hook_mlp_out"],
        expected @ mlp.W_out + (0 if mlp.b_out is None else mlp.b_out),  # TL 4: None, no bias
        rtol=1e-5,
        atol=1e-5,
    )


def test_ablating_a_planted_output_neuron_changes_logits_as_computed(qwen, examples):
    layer, neuron, token = 1, 11, 42
    with torch.no_grad():  # plant: neuron 11 writes the unembedding direction of token 42
        direction = qwen.W_U[:, token] / qwen.W_U[:, token].norm()
        qwen.blocks[layer].mlp.W_out[neuron] = 20 * direction
    batch = _batch(qwen, examples[:3])
    base_logits, base = _run(qwen, batch)
    logits, _ = _run(qwen, batch, ablation_hooks(qwen, [(layer, neuron)], "zero"))
    act = base["blocks.1.mlp.hook_post"][..., neuron]  # (B, T)
    resid = base["blocks.1.hook_resid_post"] - act[..., None] * qwen.blocks[layer].mlp.W_out[neuron]
    expected = qwen.unembed(qwen.ln_final(resid))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # and the planted token's logit moves against the neuron's sign
    moved = (logits - base_logits)[..., token]
    assert (torch.sign(moved) == -torch.sign(act))[act.abs() > 1e-2].float().mean() > 0.9


def test_slots_only_and_resample_take_another_examples_slots(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    batch = _batch(qwen, examples[:4], 3)
    writer = prompt.writer()
    writer.start(batch)
    _, base = _run(qwen, batch, [("hook_embed", writer)])
    ids = [5, 9]
    iv = NeuronIntervention(qwen, [(1, i) for i in ids], "resample", positions="slots", seed=3)
    iv.start(batch)
    _, cache = _run(qwen, batch, [("hook_embed", writer), *iv.hooks()])
    post0, post = base["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_post"]
    slots = batch.slot_positions
    for b in range(4):
        got = post[b, slots[b]][:, ids]
        donors = [d for d in range(4) if torch.equal(got, post0[d, slots[d]][:, ids])]
        assert donors and b not in donors
        outside = torch.ones(post.shape[1], dtype=torch.bool)
        outside[slots[b]] = False
        assert torch.equal(post[b, outside], post0[b, outside])


def test_noise_is_seeded(qwen, examples):
    batch = _batch(qwen, examples[:2])
    a, _ = _run(qwen, batch, ablation_hooks(qwen, [(0, 1)], "noise", noise_std=0.5, seed=1))
    b, _ = _run(qwen, batch, ablation_hooks(qwen, [(0, 1)], "noise", noise_std=0.5, seed=1))
    c, _ = _run(qwen, batch, ablation_hooks(qwen, [(0, 1)], "noise", noise_std=0.5, seed=2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_context_manager_removes_hooks_even_on_error(qwen):
    mask = torch.zeros(qwen.cfg.n_layers, qwen.cfg.d_mlp, dtype=torch.bool)
    mask[1, 3] = True
    with pytest.raises(RuntimeError, match="boom"), ablated(qwen, mask, "zero"):
        assert len(qwen.blocks[1].mlp.hook_post.fwd_hooks) == 1
        raise RuntimeError("boom")
    assert all(len(hp.fwd_hooks) == 0 for hp in qwen.hook_dict.values())


def test_neuron_set_errors(qwen):
    with pytest.raises(ValueError, match="outside the model"):
        NeuronSet.of([(9, 0)], qwen)
    with pytest.raises(ValueError, match="bool"):
        NeuronSet.of(torch.zeros(2, 3), qwen)
    with without_type_checks(), pytest.raises(ValueError, match="mode must be one of"):
        NeuronIntervention(qwen, [(0, 1)], "delete")
    with pytest.raises(ValueError, match="needs means"):
        NeuronIntervention(qwen, [(0, 1)], "mean")


def test_random_controls_are_reproducible_and_match_layers(qwen):
    selected = [(0, 1), (0, 2), (1, 7)]
    a = random_sets(qwen, selected, 6, seed=4)
    b = random_sets(qwen, selected, 6, seed=4)
    c = random_sets(qwen, selected, 6, seed=5)
    assert all(
        x.keys() == y.keys() and all(torch.equal(x[L], y[L]) for L in x)
        for x, y in zip(a, b, strict=True)
    )
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    for drawn in a:
        assert {L: len(v) for L, v in drawn.items()} == {0: 2, 1: 1}
        assert not {1, 2} & set(drawn[0].tolist()) and 7 not in drawn[1].tolist()
    scale = {0: torch.arange(128.0), 1: torch.arange(128.0)}
    matched = random_sets(qwen, selected, 20, seed=0, scale=scale, pool=4)
    assert all(abs(int(i) - 7) <= 3 for m in matched for i in m[1])
    # the counterfactual's controls come from the same sampler: distinct, never selected, and
    # every unselected unit of the layer when fewer are left than asked for
    units = RandomUnits(NeuronSet.of(selected, qwen), seed=4)
    assert torch.equal(units.draw(0, 2).sort().values, a[0][0])
    drawn = units.draw(0, 500).tolist()
    assert sorted(drawn) == [i for i in range(128) if i not in (1, 2)]


def test_choice_accuracy_matches_an_independent_computation(qwen):
    ex = [
        sklens.Example(
            f"What is {a} plus 1?",
            str(a + 1),
            {"choices": [str(a + 1), str(a + 5), "house"], "answer": str(a + 1)},
        )
        for a in range(6)
    ]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    table = evaluate(qwen, prompt, ex, metric=sklens.metrics.choice_confidence(), batch_size=4)
    per_token_differs = False
    for i, e in enumerate(ex):
        scores, per_token = [], []
        for c in e.meta["choices"]:
            ids, start, logits, _ = reference_cache(
                qwen, prompt, sklens.Example(e.instruction, c), set()
            )
            comp = start + 2
            logp = torch.log_softmax(logits[0].double(), -1)[comp - 1 : len(ids) - 1]
            token_logp = logp.gather(1, torch.tensor(ids[comp:])[:, None])
            scores.append(float(token_logp.sum()))
            per_token.append(float(token_logp.mean()))
        assert table.correct[i] == float(np.argmax(scores) == 0)
        assert table.chosen[i] == float(np.argmax(scores))
        assert table.correct_per_token[i] == float(np.argmax(per_token) == 0)
        per_token_differs |= bool(np.argmax(scores) != np.argmax(per_token))
        probs = np.exp(np.array(scores) - max(scores))
        assert table.choice_confidence[i] == pytest.approx(probs[0] / probs.sum(), rel=1e-5)
        assert table.metric[i] == table.choice_confidence[i]
    assert per_token_differs  # "house" (one token) vs multi-token numbers: the rules disagree


def test_choice_confidence_scan_equals_a_scan_of_its_values(qwen):
    ex = [
        sklens.Example(
            f"What is {a} plus {b}?",
            str(a + b),
            {"choices": [str(a + b), str(a + b + 3), "house"], "answer": str(a + b)},
        )
        for a in range(4)
        for b in range(3)
    ]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    confidence = evaluate(qwen, prompt, ex, batch_size=5).choice_confidence.to_numpy()
    got = sklens.scan(qwen, prompt, ex, sklens.metrics.choice_confidence(), progress=False)
    ref = sklens.scan(qwen, prompt, ex, sklens.metrics.values(confidence), progress=False)
    np.testing.assert_allclose(got.metric_values.numpy(), confidence, rtol=1e-6)
    torch.testing.assert_close(got.corr, ref.corr, equal_nan=True)


def test_choice_confidence_needs_choices(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    with pytest.raises(ValueError, match="choice_confidence needs multiple-choice examples"):
        sklens.scan(qwen, prompt, examples, sklens.metrics.choice_confidence(), progress=False)


def test_mean_ablation_is_position_matched_at_the_slots(qwen, examples):
    """neuron_stats gives one mean per (neuron, slot), equal to numpy's mean of run_with_cache
    activations; mean ablation writes each slot's own mean."""
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    ref = examples[:10]
    means, scale = neuron_stats(qwen, prompt, ref, [0, 1], batch_size=4)
    acts = reference_slot_acts(qwen, prompt, ref, [0, 1])  # (N, L, d, k)
    for j, L in enumerate([0, 1]):
        assert means[L].shape == (qwen.cfg.d_mlp, 3)
        np.testing.assert_allclose(means[L].numpy(), acts[:, j].mean(0), atol=1e-6)
        np.testing.assert_allclose(
            scale[L].numpy(), np.abs(acts[:, j]).mean(axis=(0, 2)), atol=1e-6
        )
    ids = [3, 9]
    seen = {}
    intervention = NeuronIntervention(
        qwen, [(1, i) for i in ids], "mean", positions="slots", means=means
    )
    with (
        intervention.applied(qwen),
        qwen.hooks(
            fwd_hooks=[("blocks.1.mlp.hook_post", lambda a, hook: seen.__setitem__("a", a.clone()))]
        ),
    ):
        batch = next(iter_batches(qwen, encode(qwen, examples[10:14], 3), 3, 4))
        intervention.start(batch)
        writer = prompt.writer()
        writer.start(batch)
        with qwen.hooks(fwd_hooks=[("hook_embed", writer)]):
            qwen(batch.tokens, attention_mask=batch.attention_mask)
    slots = gather_slots(seen["a"], batch)  # (B, k, d)
    for b in range(4):
        torch.testing.assert_close(slots[b][:, ids].double(), means[1][ids].T, atol=1e-6, rtol=0)


def test_causal_p_is_a_rank_among_random_sets_not_a_distance_from_zero():
    """The review's case: random edits all move the loss up (+0.06…+0.10); a selected edit below
    every one of them is unusual (p = 1/20), though |Δ| is not larger than theirs."""
    randoms = np.linspace(0.06, 0.10, 19)
    assert rank_p(-0.08, randoms) == pytest.approx(1 / 20)
    assert rank_p(0.0, randoms) == pytest.approx(1 / 20)
    assert rank_p(float(np.median(randoms)), randoms) == pytest.approx(1.0)
    assert rank_p(0.2, randoms) == pytest.approx(1 / 20)
    # |0.095 − 0.08| = 0.015: three random sets at each end are as far out
    assert rank_p(0.095, randoms) == pytest.approx((1 + 6) / 20)


def test_causal_check_finds_a_planted_causal_neuron(qwen, examples):
    with torch.no_grad():
        qwen.blocks[1].mlp.W_out[11] *= 200  # one neuron that dominates the output
    table = causal_check(
        qwen,
        None,
        examples[:12],
        [(1, 11)],
        modes=("zero",),
        n_random=4,
        group_by="op",
        seed=0,
        progress=False,
        n_boot=200,
    )
    selected = table[(table.set == "selected") & (table.group == "all")].iloc[0]
    randoms = table[(table.set != "selected") & (table.group == "all")]
    assert abs(selected.d_loss) > 5 * randoms.d_loss.abs().max()
    assert selected.p_loss == pytest.approx(1 / 5)
    assert selected.d_loss_lo <= selected.d_loss <= selected.d_loss_hi
    assert set(table.group) == {"all", "op=minus", "op=plus"} and len(table) == 5 * 3
    assert table[table.set != "selected"].p_loss.isna().all()
    assert table.match_scale.all()  # scale-matched random sets by default


def test_causal_check_with_a_prompt_on_both_backends(qwen_dir, examples):
    hooked = sklens.load_model(qwen_dir, device="cpu")
    bridge = sklens.load_model(qwen_dir, backend="bridge", device="cpu")
    prompt = sklens.SoftPrompt.init_for(hooked, 3, seed=0)
    kw = dict(modes=("zero", "mean", "resample"), n_random=2, seed=1, progress=False, n_boot=50)
    a = causal_check(hooked, prompt, examples[:8], [(0, 3), (1, 4)], **kw)
    b = causal_check(bridge, prompt, examples[:8], [(0, 3), (1, 4)], **kw)
    np.testing.assert_allclose(a.d_loss.to_numpy(), b.d_loss.to_numpy(), atol=1e-4)
    ranked = sklens.scan(hooked, prompt, examples, sklens.metrics.label("a"), progress=False).top_k(
        3
    )
    dose = dose_response(
        hooked, prompt, examples[:8], ranked, ks=(1, 3), n_random=2, progress=False, n_boot=50
    )
    assert set(dose.k) == {1, 3} and set(dose[dose.set == "selected"].n_neurons) == {1, 3}


def test_choices_share_one_pass_over_the_question_and_give_the_same_numbers(qwen, monkeypatch):
    """A question's choices run the text before the slots once (``shared_prefix_pass``) and
    continue from its keys and values; every choice's log-probability still equals an unpadded
    ``run_with_cache`` of that choice alone, with the prompt written in and the neurons zeroed
    at the slots by hooks made here."""
    import sklens.scanning.choices as choices_module

    calls = []
    real = choices_module.shared_prefix_pass

    def spy(*args, **kwargs):
        calls.append(1)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(choices_module, "shared_prefix_pass", spy)
    ex = [
        sklens.Example(
            "Question: " + "what is " * (1 + a % 3) + f"{a} times 11?",
            str(a * 11),
            {
                "choices": [str(a * 11), str(a * 11 + 10), "no", "1" + str(a) * 3],
                "answer": str(a * 11),
            },
        )
        for a in range(2, 7)
    ]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    ablate = {0: [3, 9], 1: [7]}
    edit = NeuronIntervention(
        qwen, [(L, i) for L, ids in ablate.items() for i in ids], "zero", positions="slots"
    )
    got = score_examples(qwen, prompt, ex, intervention=edit, batch_size=2)
    # the shared pass is HookedTransformer's (TransformerLens 4 has only the bridge, which is
    # scored whole); the numbers below must hold either way
    assert bool(calls) == (type(qwen).__name__ == "HookedTransformer")
    n = prompt.n_slots
    for k, e in enumerate(ex):
        totals, means = [], []
        for c in e.meta["choices"]:
            ids, start, _ = reference_tokens(qwen, sklens.Example(e.instruction, c), n)

            def write(embed, hook, start=start):
                embed = embed.clone()
                embed[0, start : start + n] = prompt.embedding.detach().to(embed.dtype)
                return embed

            def zero(act, hook, start=start):
                act = act.clone()
                layer = int(hook.name.split(".")[1])
                act[0, start : start + n, ablate[layer]] = 0.0
                return act

            hooks = [("hook_embed", write)]
            hooks += [(f"blocks.{L}.mlp.hook_post", zero) for L in ablate]
            with torch.no_grad(), qwen.hooks(fwd_hooks=hooks):
                logits = qwen(torch.tensor([ids]))
            logp = torch.log_softmax(logits[0].double(), -1)[start + n - 1 : len(ids) - 1]
            token_logp = logp.gather(1, torch.tensor(ids[start + n :])[:, None])
            totals.append(float(token_logp.sum()))
            means.append(float(-token_logp.mean()))
        assert got.total_logprob[k].item() == pytest.approx(totals[0], abs=1e-4)
        assert got.mean_loss[k].item() == pytest.approx(means[0], abs=1e-4)
        probs = np.exp(np.array(totals) - max(totals))
        assert got.choice_confidence[k].item() == pytest.approx(probs[0] / probs.sum(), rel=1e-4)


def test_resample_batches_of_choices_always_mix_questions():
    """On the bridge each choice runs whole, and a batch of one question's choices (the last,
    often) has no donor from another question: the README's causal check failed there."""
    from sklens.scanning.choices import _mixed_batches

    owner = [q for q, n in enumerate([7, 6, 7, 6, 7, 7, 6]) for _ in range(n)]
    for batch_size in (2, 3, 5, 8, 16):
        order, size = _mixed_batches(owner, batch_size)
        assert sorted(order) == list(range(len(owner))) and 2 <= size <= max(2, batch_size)
        for start in range(0, len(order), size):
            assert len({owner[r] for r in order[start : start + size]}) > 1
    plain = [owner[i : i + 8] for i in range(0, len(owner), 8)]
    assert any(len(set(batch)) == 1 for batch in plain)  # the plain order does leave one


@pytest.mark.parametrize("n", [5, 18, 19, 39, 199])
def test_detectable_is_where_the_rank_p_crosses_005(n):
    """``detectable`` against ``rank_p`` itself: a change just beyond the bound reaches 0.05, one
    just inside does not; below 19 random sets nothing can."""
    from sklens.causal.changes import detectable

    randoms = np.random.default_rng(n).normal(0.1, 0.02, n)
    bound = detectable(randoms)
    median = float(np.median(randoms))
    if n < 19:
        assert bound == np.inf
        assert rank_p(median + 100.0, randoms) > 0.05  # the floor 1/(n+1) is above 0.05
        return
    assert rank_p(median + bound + 1e-9, randoms) <= 0.05
    assert rank_p(median + bound - 1e-9, randoms) > 0.05
    assert rank_p(median - bound - 1e-9, randoms) <= 0.05


def test_positive_control_is_detected_and_bounds_are_the_interval_beyond_the_median(qwen, examples):
    """Every unit of the selected layers zeroed (the positive control) moves the loss beyond
    what 19 random sets of the selected set's size let the test detect; the selected set's
    excess and bound are its interval less the random median, recomputed here."""
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    table = causal_check(
        qwen, prompt, examples[:10], [(1, 3), (1, 7)], modes=("zero",), n_random=19,
        positive="layers", seed=0, progress=False, n_boot=200,
    )  # fmt: skip
    overall = table[table.group == "all"]
    positive = overall[overall.set == "positive"].iloc[0]
    assert positive.n_neurons == qwen.cfg.d_mlp
    assert abs(positive.excess_loss) > positive.mde_loss and positive.p_loss == pytest.approx(0.05)
    selected = overall[overall.set == "selected"].iloc[0]
    median = overall[overall.set.str.startswith("random_")].d_loss.median()
    assert selected.excess_loss == pytest.approx(selected.d_loss - median)
    lo, hi = selected.d_loss_lo - median, selected.d_loss_hi - median
    assert selected.bound_loss == pytest.approx(max(abs(lo), abs(hi)))
    # the prompt's own effect: the loss without the prompt less the loss with it
    plain = evaluate(qwen, None, examples[:10]).loss - evaluate(qwen, prompt, examples[:10]).loss
    assert selected.prompt_effect_loss == pytest.approx(plain.mean())


def test_random_units_are_drawn_from_their_selected_units_stratum(qwen, examples):
    from sklens.causal.controls import score_strata

    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    scan = sklens.scan(qwen, prompt, examples, "label:op=plus", progress=False)
    strata = score_strata(scan)
    score = scan.scores()[0].abs().numpy()
    deciles = np.quantile(score.ravel(), np.linspace(0, 1, 11)[1:-1])
    assert (strata[1].numpy() == np.searchsorted(deciles, score[1], side="left")).all()
    top = scan.top_k(4)
    selected = NeuronSet.of(top, qwen)
    for drawn in random_sets(qwen, selected, 10, seed=3, strata=strata):
        for layer, ids in selected.by_layer().items():
            assert sorted(strata[layer][drawn[layer]].tolist()) == sorted(
                strata[layer][ids].tolist()
            )


def test_dose_response_compares_rankings_and_draws_them(qwen, examples):
    """Each ranking's top-k row is the causal check of that ranking's first k units, and the
    figure draws one line per ranking through the selected rows' changes."""
    from sklens.views import figures

    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    by_r = sklens.scan(qwen, prompt, examples, "label:op=plus", progress=False).top_k(3)
    backwards = by_r.iloc[::-1].reset_index(drop=True)
    kw = dict(n_random=2, seed=1, progress=False, n_boot=50)
    dose = dose_response(
        qwen, prompt, examples[:8], {"r": by_r, "reversed": backwards}, ks=(1, 3), **kw
    )
    chosen = dose[(dose.set == "selected") & (dose.group == "all")]
    assert list(zip(chosen.ranking, chosen.k, strict=True)) == [
        ("r", 1), ("r", 3), ("reversed", 1), ("reversed", 3)
    ]  # fmt: skip
    alone = causal_check(qwen, prompt, examples[:8], backwards.head(1), modes=("zero",), **kw)
    first = alone[(alone.set == "selected") & (alone.group == "all")].d_loss.iloc[0]
    assert chosen.d_loss.iloc[2] == pytest.approx(first)
    fig = figures.dose_response(dose)
    lines = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert len(lines) == 2
    drawn = np.asarray(lines[1].get_ydata(), dtype=float)
    np.testing.assert_allclose(drawn, chosen.d_loss.iloc[2:].to_numpy())
    with pytest.raises(ValueError, match="k=4 exceeds the 3 units of ranking 'r'"):
        dose_response(qwen, prompt, examples[:8], {"r": by_r}, ks=(4,), **kw)


def test_mean_ablation_of_a_positive_control_in_other_layers(qwen, examples):
    """The control's layers get their own means (a control outside the selected layers failed
    with "means lack layers")."""
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    table = causal_check(
        qwen, prompt, examples[:6], [(0, 3)], modes=("mean",), n_random=2, positive=[(1, 5)],
        progress=False, n_boot=50,
    )  # fmt: skip
    positive = table[(table.set == "positive") & (table.group == "all")].iloc[0]
    assert positive.n_neurons == 1 and positive.d_loss == positive.d_loss  # ran, not NaN
