"""Sites: every kind of unit scanned, read and edited with the same code, each checked against an
independent computation — numpy on activations cached by TransformerLens's own
``run_with_cache`` (``sklens.run_with_cache``: one cache with the prompt in place), and for SAE
latents SAELens's own ``HookedSAETransformer`` hook — plus a planted latent, edits against hooks
written here, and unit ids that cannot cross sites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sklens
from sklens.app.cli import main
from sklens.units import sites
from sklens.units.neuron_set import NeuronSet
from tests.helpers import arithmetic_examples

try:  # installed by the test command (pyproject's dev extra); SAELens needs TransformerLens 3
    import sae_lens
except ImportError:
    sae_lens = None
needs_sae = pytest.mark.skipif(sae_lens is None, reason="SAELens cannot import here (TL 4)")


def random_sae(d_in: int, d_sae: int, hook: str, seed: int = 0, always_on: int | None = None):
    """A SAELens StandardSAE with random weights, built offline (no hub)."""
    cfg = sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    sae = sae_lens.StandardSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=g))
        if always_on is not None:
            sae.b_enc[always_on] = 50.0  # active on every example, so it can track a metric
    return sae


def numpy_sae(sae, x: np.ndarray) -> np.ndarray:
    """StandardSAE's encoder written out in numpy: relu((x - b_dec) W_enc + b_enc)."""
    w = {k: getattr(sae, k).detach().double().numpy() for k in ("W_enc", "b_enc", "b_dec")}
    return np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0.0)


def corr_numpy(units: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """``[examples, slot, unit]`` → Pearson r ``[unit, slot]`` by ``numpy.corrcoef``."""
    n, k, u = units.shape
    out = np.full((u, k), np.nan)
    for s in range(k):
        for i in range(u):
            col = units[:, s, i]
            if col.std() > 1e-9 * max(1.0, np.abs(col).max()):
                out[i, s] = np.corrcoef(col, metric)[0, 1]
    return out


def cached_units(model, cache, batch, layer: int, kind: str, extra) -> np.ndarray:
    """Units ``[examples, slot, unit]`` computed in numpy from TransformerLens's cache."""
    rows = torch.arange(len(batch.indices))[:, None]

    def at_slots(name: str) -> np.ndarray:
        return cache[name.format(layer=layer)][rows, batch.slot_positions].double().numpy()

    if kind == "mlp":
        return at_slots("blocks.{layer}.mlp.hook_post")
    if kind in ("heads", "head_dims"):
        z = at_slots("blocks.{layer}.attn.hook_z")  # (n, k, H, d_head)
        if kind == "head_dims":
            return z.reshape(*z.shape[:2], -1)
        w_o = model.blocks[layer].attn.W_O.detach().double().numpy()  # (H, d_head, d_model)
        return np.linalg.norm(np.einsum("nkhd,hdm->nkhm", z, w_o), axis=-1)
    if kind == "resid":
        return at_slots("blocks.{layer}.hook_resid_post")
    if kind == "template":
        return at_slots("blocks.{layer}.hook_resid_mid")
    if kind == "directions":
        return at_slots("blocks.{layer}.hook_resid_post") @ extra.double().numpy().T
    if kind == "sae":
        return numpy_sae(extra, at_slots("blocks.{layer}.hook_resid_post"))
    raise AssertionError(kind)


def make_site(kind: str, model):
    if kind in ("mlp", "heads", "head_dims", "resid"):
        return kind, None
    if kind == "template":
        return "blocks.{layer}.hook_resid_mid", None
    g = torch.Generator().manual_seed(3)
    if kind == "directions":
        vectors = torch.randn(5, model.cfg.d_model, generator=g)
        return sites.Directions.of(vectors), vectors
    sae = random_sae(model.cfg.d_model, 48, "blocks.1.hook_resid_post", seed=4)
    return sae, sae


KINDS = ["mlp", "heads", "head_dims", "resid", "template", "directions"]


@pytest.mark.parametrize("kind", [*KINDS, pytest.param("sae", marks=needs_sae)])
def test_scan_equals_numpy_on_run_with_cache(kind, qwen):
    examples = arithmetic_examples(14, seed=5)
    metric = [float(e.meta["a"]) + 3.0 * (i % 3) for i, e in enumerate(examples)]
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=2)
    site, extra = make_site(kind, qwen)
    result = sklens.scan(qwen, prompt, examples, metric, site=site, progress=False)
    _, cache, batch = sklens.run_with_cache(qwen, prompt, examples, with_completion=False)
    for j, layer in enumerate(result.layers):
        expected = corr_numpy(
            cached_units(qwen, cache, batch, layer, kind, extra), np.array(metric)
        )
        got = result.corr[j].numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    top = result.top_k(3)
    assert (top.site == result.settings.site).all() and result.site.name == result.settings.site
    if kind == "sae":  # an SAE sits at one layer: only that layer is scanned
        assert result.layers == [1] and result.settings.site.startswith("sae:")
    # the same units, read again for the top rows through the site, match the scan's reading
    acts = sklens.slot_activations(qwen, prompt, examples, top)
    for col, row in enumerate(top.itertuples()):
        ref = cached_units(qwen, cache, batch, row.layer, kind, extra)[:, :, row.unit]
        np.testing.assert_allclose(acts[:, col].numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["heads", "resid"])
def test_bridge_backend_scans_the_same_units(kind):
    model = sklens.tiny_model("qwen2", backend="bridge")
    examples = arithmetic_examples(10, seed=6)
    metric = [float(e.meta["a"]) for e in examples]
    prompt = sklens.SoftPrompt.init_for(model, 2, seed=1)
    result = sklens.scan(model, prompt, examples, metric, site=kind, progress=False)
    _, cache, batch = sklens.run_with_cache(model, prompt, examples, with_completion=False)
    for j, layer in enumerate(result.layers):
        expected = corr_numpy(
            cached_units(model, cache, batch, layer, kind, None), np.array(metric)
        )
        np.testing.assert_allclose(result.corr[j].numpy(), expected, atol=1e-5, rtol=0)


@needs_sae
def test_a_planted_sae_latent_ranks_first(qwen):
    examples = arithmetic_examples(40, seed=7)
    prompt = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    sae = random_sae(qwen.cfg.d_model, 64, "blocks.1.hook_resid_post", seed=9, always_on=23)
    _, cache, batch = sklens.run_with_cache(qwen, prompt, examples, with_completion=False)
    latents = cached_units(qwen, cache, batch, 1, "sae", sae)  # (n, k, 64)
    rng = np.random.default_rng(0)
    planted = latents[:, 2, 23]
    metric = planted + 0.2 * planted.std() * rng.standard_normal(len(examples))
    result = sklens.scan(qwen, prompt, examples, metric.tolist(), site=sae, n_permutations=99,
                         progress=False)  # fmt: skip
    top = result.top_k(1)
    assert (int(top.layer[0]), int(top.unit[0]), int(top.slot[0])) == (1, 23, 2)
    assert float(top.p_fwer[0]) == pytest.approx(0.01)
    assert sklens.viz.neuron_labels(top) == ["L1 F23 @soft2"]
    best = sklens.top_examples(qwen, prompt, examples, layer=1, unit=23, slot=2, n=1, site=sae)
    assert int(best.example[0]) == int(planted.argmax())
    assert float(best.activation[0]) == pytest.approx(float(planted.max()), abs=1e-4)


@needs_sae
def test_sae_scan_equals_saelens_own_hook(qwen):
    """The same latents through SAELens's HookedSAETransformer (an attached SAE's
    ``hook_sae_acts_post``, a hook template) and through ``SAELatents`` (sklens encodes)."""
    sae = random_sae(qwen.cfg.d_model, 32, "blocks.0.hook_resid_post", seed=11)
    hooked = sae_lens.HookedSAETransformer(qwen.cfg, tokenizer=qwen.tokenizer)
    hooked.load_state_dict(qwen.state_dict())
    hooked.add_sae(sae, use_error_term=True)
    examples = arithmetic_examples(12, seed=3)
    metric = [float(e.meta["a"]) for e in examples]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=5)
    ours = sklens.scan(qwen, prompt, examples, metric, site=sae, progress=False)
    template = "blocks.{layer}.hook_resid_post.hook_sae_acts_post"
    theirs = sklens.scan(hooked, prompt, examples, metric, site=template, progress=False)
    assert theirs.layers == [0]  # only where the SAE is attached
    torch.testing.assert_close(ours.corr, theirs.corr, atol=1e-5, rtol=0, equal_nan=True)


def _logits(model, tokens, hooks=()):
    with model.hooks(fwd_hooks=list(hooks)):
        return model(tokens)


@needs_sae
def test_edits_equal_hooks_written_here(qwen):
    tokens = torch.tensor([[5, 17, 33, 2, 9, 41]])

    # a head: zero ablation removes its z
    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    expected = _logits(qwen, tokens, [("blocks.0.attn.hook_z", zero_head)])
    with sklens.ablated(qwen, NeuronSet.of([(0, 2)], site="heads"), "zero"):
        got = qwen(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # scaling a head's unit scales its output norm: the recorded unit after the edit is ×3
    site = sites.resolve_site("heads", qwen)
    z = torch.randn(2, 4, qwen.cfg.n_heads, qwen.cfg.d_head)
    units = site.units(z, 1)
    edited = site.write(z, 1, units, torch.tensor([1]), 3 * units[..., [1]])
    torch.testing.assert_close(site.units(edited, 1)[..., 1], 3 * units[..., 1])
    torch.testing.assert_close(edited[:, :, [0, 2, 3]], z[:, :, [0, 2, 3]])
    # an SAE latent: the edit adds (new - old) · W_dec[j] and keeps the SAE's error term
    sae = random_sae(qwen.cfg.d_model, 24, "blocks.1.hook_resid_post", seed=2)

    def minus_latent(x, hook):
        f = numpy_sae(sae, x.detach().double().numpy())[..., 5]
        return x - torch.tensor(f)[..., None].to(x.dtype) * sae.W_dec[5].detach()

    expected = _logits(qwen, tokens, [("blocks.1.hook_resid_post", minus_latent)])
    units = NeuronSet.of([(1, 5)], site=sae)
    with sklens.ablated(qwen, units, "zero"):
        got = qwen(tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    dead = random_sae(qwen.cfg.d_model, 24, "blocks.1.hook_resid_post", seed=2)
    with torch.no_grad():
        dead.b_enc[
            5
        ] = -1e4  # never active: editing it must change nothing (no reconstruction swap)
    with sklens.ablated(qwen, NeuronSet.of([(1, 5)], site=dead), "zero"):
        torch.testing.assert_close(qwen(tokens), _logits(qwen, tokens), atol=0, rtol=0)
    # directions that are not orthogonal: the edit moves one projection and no other
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(3, qwen.cfg.d_model, generator=g) + 2.0  # correlated directions
    site = sites.Directions.of(vectors).bind(qwen)
    x = torch.randn(2, 4, qwen.cfg.d_model, generator=g)
    before = site.units(x, 0)
    after = site.units(site.write(x, 0, before, torch.tensor([1]), torch.zeros(2, 4, 1)), 0)
    torch.testing.assert_close(after[..., 1], torch.zeros(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(after[..., [0, 2]], before[..., [0, 2]], atol=1e-4, rtol=0)


@needs_sae
def test_unit_ids_carry_their_site(qwen):
    examples = arithmetic_examples(16, seed=2)
    metric = [float(e.meta["a"]) for e in examples]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    sae = random_sae(qwen.cfg.d_model, 40, "blocks.1.hook_resid_post", seed=6)
    result = sklens.scan(qwen, prompt, examples, metric, site=sae, progress=False)
    top = result.top_k(3)
    # the table alone finds its SAE: its hooks are the SAE's, never blocks.1.mlp.hook_post
    intervention = sklens.NeuronIntervention(qwen, top, "zero", positions="all")
    assert [name for name, _ in intervention.hooks()] == ["blocks.1.hook_resid_post"]
    with pytest.raises(ValueError, match="belong to site 'sae:.*but site='mlp'"):
        NeuronSet.of(top, qwen, site="mlp")
    # a table saved to CSV and read back keeps its site
    back = pd.read_csv(pd.io.common.StringIO(top.to_csv(index=False)))
    assert NeuronSet.of(back, qwen).site is result.site
    # random controls are latents of the same SAE (ids beyond d_mlp=128 would not exist as MLP)
    table = sklens.causal_check(qwen, prompt, examples[:8], top, modes=("zero",), n_random=3,
                                match_scale=False, n_boot=50, progress=False)  # fmt: skip
    assert set(table.set) == {"selected", "random_0", "random_1", "random_2"}
    drawn = sklens.random_sets(qwen, NeuronSet.of(top, qwen), 200, seed=1)
    highest = max(int(v.max()) for d in drawn for v in d.values())
    assert 30 <= highest < 40
    # heads and MLP ids of the same numbers stay apart
    heads = sklens.scan(qwen, prompt, examples, metric, site="heads", progress=False).top_k(2)
    hooks = sklens.NeuronIntervention(qwen, heads, "zero").hooks()
    assert all(name.endswith("attn.hook_z") for name, _ in hooks)
    assert sklens.viz.neuron_labels(heads)[0].split()[1].startswith("H")


def test_one_label_per_unit_and_per_unit_at_a_slot():
    assert sites.unit_label("mlp", 3, 5) == "L3 N5" and sites.unit_label("heads", 3, 5) == "L3 H5"
    assert sites.unit_label("sae:x", 8, 1234) == "L8 F1234"
    # tables and summaries write the slot as @slot, views as @soft, from the same unit label
    assert sites.unit_slot_label("heads", 3, 5, 2) == "L3 H5 @slot2"
    assert sites.unit_slot_label("mlp", 3, 5, 2, word="soft") == "L3 N5 @soft2"


def test_save_load_keeps_the_site(qwen, tmp_path):
    examples = arithmetic_examples(10, seed=4)
    metric = [float(e.meta["a"]) for e in examples]
    prompt = sklens.SoftPrompt.init_for(qwen, 2, seed=0)
    result = sklens.scan(qwen, prompt, examples, metric, site="head_dims", progress=False)
    loaded = sklens.Scan.load(result.save(tmp_path / "s.safetensors"))
    assert loaded.settings.site == "head_dims" and loaded.site.name == "head_dims"
    assert loaded.settings.n_units == qwen.cfg.n_heads * qwen.cfg.d_head
    torch.testing.assert_close(loaded.corr, result.corr, equal_nan=True)
    assert sklens.viz.neuron_labels(loaded.top_k(1))[0].split()[1].startswith("Z")
    # activations scanned without a model keep the site they were read at
    acts = torch.randn(12, 2, 3, 4)
    pre = sklens.scan_activations(acts, acts[:, 1, 0, 2] + 0.1 * torch.randn(12), site="heads")
    assert pre.top_k(1).site[0] == "heads" and sklens.viz.neuron_labels(pre.top_k(1)) == [
        "L1 H2 @soft0"
    ]


@needs_sae
def test_bad_sites_fail_before_any_pass(qwen):
    examples = arithmetic_examples(6, seed=1)
    metric = [float(i) for i in range(6)]
    with pytest.raises(ValueError, match="no hook 'blocks.0.mlp.hook_nope'"):
        sklens.scan(qwen, None, examples, metric, site="blocks.{layer}.mlp.hook_nope")
    with pytest.raises(ValueError, match=r"not \[batch, pos, \.\.\.\]"):
        sklens.scan(qwen, None, examples, metric, site="blocks.{layer}.attn.hook_pattern")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    attn_only = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=32, d_head=4, n_heads=4, d_vocab=50, attn_only=True
    ))  # fmt: skip
    with pytest.raises(ValueError, match="attention-only model has no MLP neurons"):
        sklens.scan(attn_only, None, examples, metric)
    with pytest.raises(ValueError, match="neither"):
        sklens.scan(qwen, None, examples, metric, site="attention")
    sae = random_sae(qwen.cfg.d_model, 8, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match=r"exists at layers \[1\], not at \[0\]"):
        sklens.scan(qwen, None, examples, metric, site=sae, layers=[0])
    wide = random_sae(qwen.cfg.d_model + 1, 8, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="width"):
        sklens.scan(qwen, None, examples, metric, site=wide)
    with pytest.raises(ValueError, match="hook_name is None"):
        sites.SAELatents.of(sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=4, d_sae=8)))


def test_command_line_site(qwen_dir, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["run", "--site", "attention", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--site must be one of mlp, heads" in err and "--site heads" in err and not out.exists()
    assert main(["run", "--site", f"sae:{tmp_path / 'none'}", "--out", str(out)]) == 2
    assert "--site sae:DIR needs directories of SAEs saved by SAELens" in capsys.readouterr().err


@needs_sae
def test_a_study_of_sae_latents_from_disk(qwen_dir, tmp_path, capsys):
    """``sklens run --site sae:DIR`` end to end: the SAE saved by SAELens is loaded offline, its
    latents are scanned, the tables carry the site, the causal check edits latents, and a resume
    reuses the scan while another SAE at the same path scans again."""
    from tests.helpers import study_args

    model = sklens.load_model(str(qwen_dir))
    sae_dir = tmp_path / "sae"
    random_sae(model.cfg.d_model, 40, "blocks.1.hook_resid_post", seed=1).save_model(sae_dir)
    out = tmp_path / "run"
    extra = ["--site", f"sae:{sae_dir}", "--ablate", "--ablate-modes", "zero", "--n-random", "2",
             "--n-causal", "6"]  # fmt: skip
    assert main(study_args(qwen_dir, out, *extra)) == 0
    neurons = pd.read_csv(out / "neurons.csv")
    name = neurons.site.iloc[0]
    assert name.startswith("sae:") and (neurons.layer == 1).all() and (neurons.unit < 40).all()
    assert sklens.Scan.load(out / "scan.safetensors").settings.n_units == 40
    causal = pd.read_csv(out / "causal.csv")
    assert set(causal.set) == {"selected", "positive", "random_0", "random_1"}
    assert pd.read_csv(out / "explanations.csv").label.str.startswith("L1 F").all()
    assert "L1 F" in capsys.readouterr().out  # the printed table labels latents as latents
    assert main(["report", str(out)]) == 0
    assert "#0: L1 F" in (out / "report.html").read_text()
    scanned = (out / "scan.safetensors").stat().st_mtime_ns
    assert main(study_args(qwen_dir, out, *extra, "--resume")) == 0
    assert (out / "scan.safetensors").stat().st_mtime_ns == scanned  # the same SAE: reused
    random_sae(model.cfg.d_model, 40, "blocks.1.hook_resid_post", seed=2).save_model(sae_dir)
    assert main(study_args(qwen_dir, out, *extra, "--resume")) == 0
    assert pd.read_csv(out / "neurons.csv").site.iloc[0] != name  # other weights: scanned again


@needs_sae
def test_an_sae_attached_to_saelens_bridge_is_a_hook_template():
    """SAELens's ``SAETransformerBridge`` names the attached SAE's hooks after the bridge's own
    hook (``blocks.L.hook_out``); scanning its ``hook_sae_acts_post`` (only where attached, with
    no ``layers=``) equals scanning the SAE object on the plain bridge."""
    path = sklens.tiny_checkpoint("qwen2", seed=0)
    bridge = sae_lens.SAETransformerBridge.boot_transformers(str(path), device="cpu")
    bridge.enable_compatibility_mode(no_processing=True)
    plain = sklens.load_model(path, backend="bridge")
    sae = random_sae(plain.cfg.d_model, 32, "blocks.1.hook_resid_post", seed=5)
    bridge.add_sae(sae, use_error_term=True)
    examples = arithmetic_examples(10, seed=1)
    metric = [float(e.meta["a"]) for e in examples]
    prompt = sklens.SoftPrompt.init_for(plain, 2, seed=0)
    ours = sklens.scan(plain, prompt, examples, metric, site=sae, progress=False)
    theirs = sklens.scan(bridge, prompt, examples, metric,
                         site="blocks.{layer}.hook_out.hook_sae_acts_post", progress=False)  # fmt: skip
    assert theirs.layers == [1]
    torch.testing.assert_close(ours.corr, theirs.corr, atol=1e-5, rtol=0, equal_nan=True)


@needs_sae
def test_a_list_of_saes_sits_at_the_layers_their_hooks_name():
    saes = [random_sae(16, 8, f"blocks.{L}.hook_resid_post", seed=L) for L in (1, 0)]
    site = sites.SAELatents.of(saes)
    assert site.only_layers == (0, 1) and site.template == "blocks.{layer}.hook_resid_post"
    assert site.saes[1] is saes[0] and site.saes[0] is saes[1]
    with pytest.raises(ValueError, match="different widths"):
        sites.SAELatents.of([saes[0], random_sae(16, 9, "blocks.0.hook_resid_post")])
