"""``sklens.attribute`` and ``exact_effects`` on every site and with paired ablation, checked
against edits written here as plain TransformerLens hooks (a head rescaled through its ``z``, an
SAE latent changed through SAELens's own ``encode``/``decode``), independent of
``sklens.units.sites`` and of the estimator's hooks."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sklens
from sklens.causal.attribution_exact import exact_effects
from sklens.units import sites
from tests.helpers import needs_hooked
from tests.unit.test_attribution import _choice_examples, _scores
from tests.unit.test_sites import needs_sae, random_sae

# -- units read and set by hand ------------------------------------------------------------------


class _Hand:
    """One site's units at one layer, read and set by hand: ``read(act)`` gives ``[batch, pos,
    unit]``, ``set(act, rows, pos, unit, values)`` gives the edited activation. ``extra``: the
    SAE, or the directions' ``[n, d_model]`` matrix."""

    def __init__(self, kind: str, model, layer: int, extra=None):
        self.kind, self.extra = kind, extra
        self.hook = {
            "resid": f"blocks.{layer}.hook_resid_post",
            "heads": f"blocks.{layer}.attn.hook_z",
            "head_dims": f"blocks.{layer}.attn.hook_z",
            "template": f"blocks.{layer}.hook_mlp_out",
            "directions": f"blocks.{layer}.hook_resid_post",
            "sae": f"blocks.{layer}.hook_resid_post",
        }[kind]
        self.w_o = model.blocks[layer].attn.W_O.detach()  # [head, d_head, d_model]

    def read(self, act):
        if self.kind == "heads":
            return torch.einsum("bphd,hdm->bphm", act, self.w_o).norm(dim=-1)
        if self.kind == "directions":
            return act @ self.extra.to(act.dtype).T
        return self.extra.encode(act) if self.kind == "sae" else act.flatten(2)

    def set(self, act, rows, pos, unit, values):
        act = act.clone()
        if self.kind in ("resid", "template"):
            act[rows, pos, unit] = values.to(act.dtype)
        elif self.kind == "head_dims":  # unit h·d_head + j is z[h, j]
            d_head = act.shape[-1]
            act[rows, pos, unit // d_head, unit % d_head] = values.to(act.dtype)
        elif self.kind == "heads":  # z_h scaled so that its write has the new norm
            old = self.read(act)[rows, pos, unit]
            act[rows, pos, unit] = act[rows, pos, unit] * (values / old).to(act.dtype)[:, None]
        elif self.kind == "directions":  # the least change that moves projection ``unit`` only
            d = self.extra.double()
            e = torch.zeros(d.shape[0], dtype=torch.float64)
            e[unit] = 1.0
            step = d.T @ torch.linalg.solve(d @ d.T, e)  # D·step = e, of least norm
            old = self.read(act)[rows, pos, unit].double()
            act[rows, pos] += ((values - old)[:, None] * step).to(act.dtype)
        else:  # the latent changed, SAELens's error term kept
            latents = self.extra.encode(act[rows, pos])
            edited = latents.clone()
            edited[:, unit] = values.to(edited.dtype)
            act[rows, pos] += self.extra.decode(edited) - self.extra.decode(latents)
        return act


def _read_slot(model, prompt, examples, hand, unit, slot):
    """Each example's unit at ``slot``, read by a plain hook."""
    seen = torch.empty(len(examples), dtype=torch.float64)

    def reader(batch):
        def read(act, hook):
            rows = torch.arange(act.shape[0])
            seen[batch.indices] = hand.read(act)[rows, batch.slot_start + slot, unit].double()

        return [(hand.hook, read)]

    _scores(model, prompt, examples, [reader])
    return seen


def _metric(name, model, prompt, examples, hooks_of):
    """Each example's metric, one example at a time; ``hooks_of(e)``: its hooks (as
    ``_scores`` takes them)."""
    out = []
    for e, example in enumerate(examples):
        if name != "margin":
            total, loss = _scores(model, prompt, [example], hooks_of(e))
            out.append(loss[0] if name == "loss" else total[0])
            continue
        choices = [str(c) for c in example.meta["choices"]]
        rows = [sklens.Example(example.instruction, c, example.meta) for c in choices]
        total, _ = _scores(model, prompt, rows, hooks_of(e))
        answer = choices.index(str(example.meta["answer"]))
        out.append(total[answer] - torch.cat([total[:answer], total[answer + 1 :]]).max())
    return torch.stack(out)


def by_hand(model, prompt, examples, kind, unit, metric, ablation, extra=None):
    """Per-example change of the metric when ``unit`` (layer, unit, slot) of the site ``kind``
    alone is set to its ablated value: 0, its mean over ``examples`` at the slot, or (a list of
    pairs) its value on each example's twin at the slot."""
    layer, index, slot = unit
    hand = _Hand(kind, model, layer, extra)
    if ablation == "zero":
        values = torch.zeros(len(examples), dtype=torch.float64)
    elif ablation == "mean":
        mean = _read_slot(model, prompt, examples, hand, index, slot).mean()
        values = mean.expand(len(examples))
    else:
        values = _read_slot(model, prompt, [twin for _, twin in ablation], hand, index, slot)

    def setter(e):
        def make(batch):
            def patch(act, hook):
                rows = torch.arange(act.shape[0])
                value = values[e].expand(act.shape[0])
                return hand.set(act, rows, batch.slot_start + slot, index, value)

            return [(hand.hook, patch)]

        return [make]

    base = _metric(metric, model, prompt, examples, lambda e: [])
    return _metric(metric, model, prompt, examples, setter) - base


def _site(kind, model, layer):
    """The site ``kind`` as ``attribute`` takes it, and what ``_Hand`` needs beside it: an SAE at
    ``layer``'s residual (its latent 1 on everywhere), or 24 random residual directions."""
    if kind == "template":
        return "blocks.{layer}.hook_mlp_out", None
    if kind == "directions":
        vectors = torch.randn(24, model.cfg.d_model, generator=torch.Generator().manual_seed(7))
        vectors = vectors / vectors.norm(dim=1, keepdim=True)  # projections in residual units
        return sites.Directions.of(vectors), vectors
    if kind != "sae":
        return kind, None
    hook = f"blocks.{layer}.hook_resid_post"
    sae = random_sae(model.cfg.d_model, 48, hook, seed=3, always_on=1)
    return sae, sae


def _twin(example):
    """The question asked with other, longer words: the twin's slots sit elsewhere."""
    return sklens.Example(
        example.instruction.replace("What is", "Tell me, what is").replace("plus", "times"),
        example.completion,
        example.meta,
    )


KINDS = [
    "resid",
    "heads",
    "head_dims",
    "template",
    "directions",
    pytest.param("sae", marks=needs_sae),
]


# -- tests ---------------------------------------------------------------------------------------


@needs_hooked  # removes ln_final from HookedTransformer's own modules
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ablation", ["mean", "pairs"])
def test_a_unit_on_a_linear_path_gets_its_exact_effect_and_stderr(qwen, kind, ablation):
    """As for MLP neurons (test_attribution): with ``ln_final`` removed, a unit of the last layer
    at the last slot reaches the two-choice margin only through the residual at the position
    that predicts the single completion token, linearly (a residual dimension; a head's write,
    scaled through its ``z``; an SAE latent, through ``decode``). A head writes before the last
    layer's MLP, which is made constant (zero input weights) so that nothing nonlinear reads
    the write. So AtP must equal exact patching per example, for the mean and for each
    example's twin."""
    qwen.ln_final = torch.nn.Identity()
    if kind in ("heads", "head_dims"):
        mlp = qwen.blocks[qwen.cfg.n_layers - 1].mlp
        with torch.no_grad():
            mlp.W_in.zero_()
            mlp.W_gate.zero_()
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    data = _choice_examples(8)
    site, extra = _site(kind, qwen, qwen.cfg.n_layers - 1)
    ablate = "mean" if ablation == "mean" else sklens.edits.pairs(data, _twin)
    result = sklens.attribute(
        qwen, prompt, data, "margin", site=site, ablation=ablate, batch_size=3, progress=False
    )
    last = qwen.cfg.n_layers - 1
    named = {"template": site, "directions": getattr(site, "name", None)}.get(kind, kind)
    assert result.settings.site == (sites.SAELatents.of(extra).name if kind == "sae" else named)
    assert result.settings.ablation == ablation
    effect = result.layer_effect(last)
    for index in effect[:, 2].abs().topk(2).indices.tolist():
        pairs = ablate[0] if ablation == "pairs" else "mean"
        exact = by_hand(qwen, prompt, data, kind, (last, index, 2), "margin", pairs, extra)
        assert float(exact.abs().mean()) > 1e-3  # a real effect, not 0 == 0
        assert effect[index, 2] == pytest.approx(float(exact.mean()), abs=1e-5)
        stderr = float(exact.std() / len(data) ** 0.5)
        assert result.stderr[result.layers.index(last), index, 2] == pytest.approx(stderr, abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ablation", ["mean", "zero", "pairs"])
def test_exact_patching_equals_a_plain_hook_on_every_site(qwen, examples, kind, ablation):
    data = examples[:5]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=1)
    site, extra = _site(kind, qwen, 0)
    last = qwen.cfg.n_layers - 1
    layers = [0] if kind == "sae" else [0, last]
    units = [(layers[0], 3, 0), (layers[-1], 1, 2), (layers[0], 1, 1)]
    ablate = sklens.edits.pairs(data, _twin)[0] if ablation == "pairs" else ablation
    helper = exact_effects(qwen, prompt, data, units, "loss", site=site, ablation=ablate)
    assert helper.shape == (len(units), len(data))
    for row, unit in zip(helper, units, strict=True):
        want = by_hand(qwen, prompt, data, kind, unit, "loss", ablate, extra)
        assert float(want.abs().max()) > 1e-5  # the edit does something
        torch.testing.assert_close(row, want, atol=2e-5, rtol=0)


def test_paired_mlp_patching_equals_a_plain_hook(qwen, examples):
    """The twin's neuron at the same slot, for MLP neurons: exact patching against a hook
    written here, and AtP's top units within a stated tolerance of it."""
    data = examples[:6]
    pairs, _ = sklens.edits.pairs(data, _twin)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    result = sklens.attribute(qwen, prompt, data, "loss", ablation=pairs, progress=False)
    top = result.top_k(3, per_slot=True)
    units = [tuple(int(x) for x in r) for r in top[["layer", "unit", "slot"]].values]
    exact = exact_effects(qwen, prompt, data, units, "loss", ablation=pairs)
    for row, unit in zip(exact, units, strict=True):
        layer, neuron, slot = unit
        twins = [twin for _, twin in pairs]
        values = _mlp_slot(qwen, prompt, twins, layer, neuron, slot)
        want = _mlp_patched(qwen, prompt, data, unit, values)
        torch.testing.assert_close(row, want, atol=2e-5, rtol=0)
        # first order: AtP within 20% of the exact effect on the top 3 (measured: 3%, 4%, 12%)
        assert result.effect[unit] == pytest.approx(float(row.mean()), rel=0.2)


def _mlp_slot(model, prompt, examples, layer, neuron, slot):
    seen = torch.empty(len(examples), dtype=torch.float64)

    def reader(batch):
        def read(act, hook):
            at = act[torch.arange(act.shape[0]), batch.slot_start + slot, neuron]
            seen[batch.indices] = at.double()

        return [(f"blocks.{layer}.mlp.hook_post", read)]

    _scores(model, prompt, examples, [reader])
    return seen


def _mlp_patched(model, prompt, examples, unit, values):
    layer, neuron, slot = unit

    def make(batch):
        def patch(act, hook):
            act = act.clone()
            rows = torch.arange(act.shape[0])
            act[rows, batch.slot_start + slot, neuron] = values[batch.indices].to(act.dtype)
            return act

        return [(f"blocks.{layer}.mlp.hook_post", patch)]

    _, base = _scores(model, prompt, examples, [])
    _, patched = _scores(model, prompt, examples, [make])
    return patched - base


@needs_sae
def test_an_sae_attribution_sits_at_the_sae_layer_and_its_table_goes_to_causal_check(
    qwen, examples, tmp_path
):
    sae = random_sae(qwen.cfg.d_model, 32, "blocks.0.hook_resid_post", seed=5)
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.attribute(qwen, prompt, examples[:6], site=sae, progress=False)
    assert result.layers == [0] and result.effect.shape == (1, 32, 2)
    table = result.top_k(3)
    assert set(table.layer) == {0} and set(table.site) == {result.settings.site}
    back = sklens.Attribution.load(result.save(tmp_path / "attribution.safetensors"))
    assert back.layers == [0] and torch.equal(back.effect, result.effect)
    checked = sklens.causal_check(
        qwen, prompt, examples[6:12], table, modes="zero", n_random=1, n_boot=20, progress=False
    )
    assert isinstance(checked, pd.DataFrame) and set(checked.set) == {"selected", "random_0"}


def test_a_heads_table_goes_to_causal_check(qwen, examples):
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.attribute(qwen, prompt, examples[:6], site="heads", progress=False)
    assert result.effect.shape == (qwen.cfg.n_layers, qwen.cfg.n_heads, 2)
    table = result.top_k(2)
    assert set(table.site) == {"heads"}
    checked = sklens.causal_check(
        qwen, prompt, examples[6:12], table, modes="zero", n_random=1, n_boot=20, progress=False
    )
    assert set(checked.set) == {"selected", "random_0"}


@pytest.mark.parametrize(
    "ablation, match",
    [
        ([], r"ablation must be one of zero, mean, or the \(original, edited\) pairs.*empty list"),
        ("pairs", r"ablation must be one of zero, mean"),
        (["a", "b"], r"ablation=pairs: item 0 is not an \(original, edited\) pair of Examples"),
        ("swapped", r"examples must be the pairs' originals in order"),
    ],
)
def test_bad_pairs_are_refused_before_any_pass(qwen, examples, monkeypatch, ablation, match):
    data = examples[:4]
    if ablation == "swapped":
        ablation = [(_twin(e), e) for e in data]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)

    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(qwen, "forward", boom)
    with pytest.raises(ValueError, match=match) as err:
        sklens.attribute(qwen, prompt, data, ablation=ablation, progress=False)
    assert "\n" not in str(err.value)


def test_an_attribution_table_goes_wherever_a_top_k_table_does(qwen, examples):
    """``Attribution.top_k`` is a unit table like ``Scan.top_k``: the activations of its units are
    the ones a plain hook reads, steering scales them (factor 1 changes nothing), ``explain``
    and the circuitsvis view take them, and its examples count as the selection's."""
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    table = sklens.attribute(qwen, prompt, examples[:6], progress=False).top_k(2)
    held_out = examples[6:18]
    acts = sklens.neuron_activations(qwen, prompt, held_out, table)
    for layer, unit in zip(table.layer, table.unit, strict=True):
        for slot in range(2):
            mine = acts[(acts.layer == layer) & (acts.unit == unit) & (acts.slot == slot)]
            by_hand = _mlp_slot(qwen, prompt, held_out, layer, unit, slot)
            torch.testing.assert_close(
                torch.tensor(mine.sort_values("example").activation.values, dtype=torch.float64),
                by_hand, atol=1e-5, rtol=0,
            )  # fmt: skip
    curve = sklens.steering_curve(
        qwen, prompt, held_out, table, factors=(0.0, 1.0), n_random=1, progress=False
    )
    selected = curve[curve.set == "selected"].set_index("factor")
    assert selected.loc[1.0, "d_loss"] == 0 and selected.loc[0.0, "d_loss"] != 0
    found = sklens.explain(
        qwen, prompt, held_out, table, fields=["op"], min_count=2, n_boot=20, progress=False
    )
    assert set(zip(found.table.layer, found.table.unit, strict=True)) <= set(
        zip(table.layer, table.unit, strict=True)
    )
    view = sklens.neuron_topk_view(qwen, prompt, held_out, table, n=2)
    for layer, unit in zip(table.layer, table.unit, strict=True):
        assert f"L{layer} N{unit}" in view._repr_html_()
    with pytest.raises(ValueError, match="are the examples that selected the units"):
        sklens.explain(qwen, prompt, examples[:12], table, progress=False)
