"""``sklens run --attribute``: the attribution of the loss on the causal split, and the table that
joins it with the correlation ranking, checked against the run's own saved scan and attribution."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import sklens
from sklens.app.attribution_stage import joined_table
from sklens.app.cli import main
from sklens.causal.attribution import Attribution
from tests.helpers import study_args


def test_run_with_attribute_writes_the_joined_table(qwen_dir, tmp_path):
    out = tmp_path / "run"
    args = [*study_args(qwen_dir, out), "--attribute", "--n-causal", "8", "--permutations", "19"]
    assert main(args) == 0
    found = Attribution.load(out / "attribution.safetensors")
    scan = sklens.Scan.load(out / "scan.safetensors")
    top = pd.read_csv(out / "attribution.csv")
    assert len(top) == 3 and found.settings.n_examples == 8 and found.settings.metric == "loss"
    joined = pd.read_csv(out / "joined.csv")
    neurons = pd.read_csv(out / "neurons.csv")

    def units(table):
        return set(zip(table.layer, table.unit, strict=True))

    assert units(joined) == units(neurons) | units(top)  # the union of both top-Ks
    for row in joined.itertuples():  # each number is the saved one at that unit and slot
        assert row.corr == pytest.approx(float(scan.corr[row.layer, row.unit, row.slot]))
        assert row.effect == pytest.approx(float(found.effect[row.layer, row.unit, row.slot]))
    assert joined.in_corr_top.sum() == 3 and joined.in_effect_top.sum() == 3
    score, _ = scan.scores("max")  # rank 1 is the neuron of the largest |score|
    best = joined[joined.corr_rank == 1].iloc[0]
    assert abs(score[best.layer, best.unit]) == score.abs().max()
    causal = (joined.effect_lo > 0) | (joined.effect_hi < 0)
    assert (joined.candidate == (causal & (joined.p_fwer <= 0.05))).all()
    summary = json.loads((out / "summary.json").read_text())["attribution"]
    assert summary["n_in_both_top"] == int((joined.in_corr_top & joined.in_effect_top).sum())
    assert summary["n_candidates"] == int(joined.candidate.sum())
    assert main(["report", str(out)]) == 0  # the manifest lists the new files
    html = (out / "report.html").read_text()
    panel = html.split("Attribution: which units move the loss")[1]
    both, candidates = summary["n_in_both_top"], summary["n_candidates"]
    verb = "is" if both == 1 else "are"
    assert f"{both} of the top 3 by |score| {verb} also in the top 3" in panel
    assert f"excluding 0): {candidates}." in panel
    assert panel.count("data:image/png;base64") >= 1  # the scatter of |score| against |effect|


def _saved_sae(model_dir, folder):
    """A random SAELens SAE on the tiny model's layer-1 residual stream, saved to ``folder``."""
    sae_lens = pytest.importorskip("sae_lens", reason="SAELens pins TransformerLens 3")
    d_model = json.loads((model_dir / "config.json").read_text())["hidden_size"]
    cfg = sae_lens.StandardSAEConfig(d_in=d_model, d_sae=24)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = sae_lens.StandardSAE(cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        sae.W_enc.copy_(torch.randn(d_model, 24, generator=g) / d_model**0.5)
        sae.W_dec.copy_(torch.randn(24, d_model, generator=g) / 24**0.5)
        sae.b_enc.copy_(0.2 * torch.randn(24, generator=g))
    sae.save_model(str(folder))
    return f"sae:{folder}"


@pytest.mark.parametrize("site", ["heads", "sae"])
def test_run_with_attribute_attributes_the_scans_site(qwen_dir, tmp_path, site):
    """With ``--site``, the attribution is of that site's units (every layer it has) and the
    joined table, the report panel and the positive control are of those units; the saved
    effects are those ``sklens.attribute`` gives for the site on the run's own prompt and causal
    split."""
    spec = _saved_sae(qwen_dir, tmp_path / "sae") if site == "sae" else site
    out = tmp_path / "run"
    extra = ("--attribute", "--ablate", "--n-random", "3", "--n-causal", "8", "--site", spec)
    assert main([*study_args(qwen_dir, out), *extra, "--permutations", "19"]) == 0
    found = Attribution.load(out / "attribution.safetensors")
    scan = sklens.Scan.load(out / "scan.safetensors")
    assert found.settings.site == scan.settings.site and found.layers == scan.layers
    assert found.layers == ([1] if site == "sae" else list(range(found.settings.n_layers)))
    finished = sklens.open_run(out)
    if site == "sae":  # the SAE as SAELens loads it, not as the study did
        from sae_lens import SAE

        site = sklens.sites.SAELatents.of(SAE.load_from_disk(spec.removeprefix("sae:")))
    again = sklens.attribute(finished.model, finished.prompt, finished.task.causal, "loss",
                             site=site, batch_size=4, progress=False)  # fmt: skip
    torch.testing.assert_close(found.effect, again.effect, rtol=1e-6, atol=1e-9)
    joined = pd.read_csv(out / "joined.csv")
    index = {layer: i for i, layer in enumerate(scan.layers)}
    for row in joined.itertuples():  # the saved numbers at that unit, slot and layer
        i = index[row.layer]
        assert row.corr == pytest.approx(float(scan.corr[i, row.unit, row.slot]))
        assert row.effect == pytest.approx(float(found.effect[i, row.unit, row.slot]))
        assert row.unit < found.settings.n_units
    top = pd.read_csv(out / "attribution.csv")
    assert set(top.site) == {scan.settings.site}
    causal = pd.read_csv(out / "causal.csv")
    assert "positive" in set(causal["set"])  # the attribution's top-K of this site
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.split("Attribution: which units move the loss")[1].count("data:image/png") >= 1


def test_joined_table_refuses_an_attribution_of_other_units(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert main([*study_args(qwen_dir, out), "--attribute", "--n-causal", "8"]) == 0
    finished = sklens.open_run(out)
    heads = sklens.attribute(finished.model, finished.prompt, finished.task.causal, "loss",
                             site="heads", batch_size=4, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="are not the scan's"):
        joined_table(sklens.Scan.load(out / "scan.safetensors"), heads, 3)
