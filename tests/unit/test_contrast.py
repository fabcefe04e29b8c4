"""The per-unit prompt contrast (``sklens.contrast``): its statistic and null against an
independent numpy computation, calibration on a planted null, power on a planted unit, what each
baseline reads, the metric values both conditions share, bad inputs, and the study's stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import sklens
from sklens.app.cli import main
from sklens.confirm import contrast as contrast_mod
from sklens.confirm.contrast import contrast_from_activations
from sklens.scanning import metrics
from tests.helpers import (
    corrcoef_rows,
    forbid_work,
    reference_losses,
    reference_slot_acts,
    reference_tokens,
    study_args,
    without_type_checks,
)


@pytest.fixture
def prompt(qwen):
    return sklens.SoftPrompt.init_for(qwen, 4, seed=0)


def _pair(n: int, layers: int, slots: int, units: int, seed: int, rho: float = 0.5):
    """Activations of two exchangeable conditions ``[n, layers, slots, units]`` sharing each
    unit's association with the metric; the baseline's shifted and scaled per unit (Pearson r
    ignores both, so the null still holds)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, generator=g, dtype=torch.float64)
    strength = rho * torch.rand(1, layers, slots, units, generator=g, dtype=torch.float64)
    shared = strength * m[:, None, None, None] + torch.randn(
        n, layers, slots, units, generator=g, dtype=torch.float64
    )
    noise = torch.randn(2, n, layers, slots, units, generator=g, dtype=torch.float64)
    trained = shared + noise[0]
    scale = 0.5 + 3 * torch.rand(1, layers, slots, units, generator=g, dtype=torch.float64)
    baseline = (shared + noise[1]) * scale + 5.0
    return trained.float(), baseline.float(), m


def _numpy_contrast(trained, baseline, m, swaps, reduce):
    """diff, p_unit, p_fwer and q_bh computed with numpy alone: each permutation's swapped
    conditions built explicitly, r by the textbook formula, the reduction over slots by hand."""
    a, b = trained.numpy().astype(np.float64), baseline.numpy().astype(np.float64)

    def standardise(x):
        c = x - x.mean(0)
        return c / np.sqrt((c**2).sum(0))

    def score(x):  # [n, L, K, U] -> [L, U]
        xc, mc = x - x.mean(0), m - m.mean()
        r = np.einsum("n,nlku->lku", mc, xc) / np.sqrt((xc**2).sum(0) * (mc**2).sum())
        if reduce == "max":
            return r.max(1)
        picked = np.take_along_axis(r, np.abs(r).argmax(1)[:, None], 1)[:, 0]
        return picked

    def diff(x, y):
        return np.arctanh(score(x)) - np.arctanh(score(y))

    observed = diff(a, b)
    sa, sb = standardise(a), standardise(b)
    permuted = []
    for s in swaps.numpy().astype(bool):
        x = np.where(s[:, None, None, None], sb, sa)
        y = np.where(s[:, None, None, None], sa, sb)
        permuted.append(np.abs(diff(x, y)))
    permuted = np.stack(permuted)  # [B, L, U]
    size = np.abs(observed)
    p_unit = (1 + (permuted >= size - 1e-9).sum(0)) / (len(swaps) + 1)
    largest = permuted.reshape(len(swaps), -1).max(1)
    p_fwer = (1 + (largest[:, None, None] >= size - 1e-9).sum(0)) / (len(swaps) + 1)
    q = scipy.stats.false_discovery_control(p_unit.ravel(), method="bh")
    return observed.ravel(), p_unit.ravel(), p_fwer.ravel(), q


@pytest.mark.parametrize("reduce", ["max", "absmax"])
def test_statistic_and_p_values_equal_an_independent_numpy_computation(reduce):
    trained, baseline, m = _pair(20, 2, 3, 12, seed=1, rho=0.8)
    trained[:, 1, 2, 5] = m.float() + 0.2 * trained[:, 1, 2, 5]  # a unit only one condition has
    found = contrast_from_activations(
        trained, baseline, m, n_permutations=99, seed=4, reduce=reduce
    )
    swaps = torch.randint(0, 2, (99, 20), generator=torch.Generator().manual_seed(4))
    diff, p_unit, p_fwer, q = _numpy_contrast(trained, baseline, m.numpy(), swaps, reduce)
    table = found.table
    assert list(table.layer) == [0] * 12 + [1] * 12 and list(table.unit) == list(range(12)) * 2
    np.testing.assert_allclose(table["diff"], diff, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(table.p_unit, p_unit)
    np.testing.assert_allclose(table.p_fwer, p_fwer)
    np.testing.assert_allclose(table.q_bh, q)
    # the scores are the scan's own, of each condition's activations
    for column, acts in (("score_trained", trained), ("score_baseline", baseline)):
        scan = sklens.scan_activations(acts, m)
        score, slot = scan.scores(reduce)
        np.testing.assert_allclose(table[column], score.flatten().numpy(), rtol=1e-6)
    assert (
        list(table.slot) == sklens.scan_activations(trained, m).scores(reduce)[1].flatten().tolist()
    )
    assert found.top_k(1)[["layer", "unit"]].values.tolist() == [[1, 5]]


def test_calibrated_under_a_planted_null():
    """Both conditions carry the same association (exchangeable within each example, the
    baseline shifted and rescaled): the share of units with p ≤ 0.05 is 0.05 within binomial
    error (1200 independent units; 3 standard errors: ±0.019), and so is the share at 0.2."""
    trained, baseline, m = _pair(40, 2, 3, 200, seed=7)
    found = contrast_from_activations(trained, baseline, m, n_permutations=199, seed=0)
    p = found.table.p_unit.to_numpy()
    assert len(p) == 400 and not np.isnan(p).any()
    shares = []
    for seed in (8, 9):  # two more independent data sets: 1200 units in all
        more = contrast_from_activations(*_pair(40, 2, 3, 200, seed=seed), n_permutations=199)
        shares.append(more.table.p_unit.to_numpy())
    p = np.concatenate([p, *shares])
    for level in (0.05, 0.2):
        error = 3 * np.sqrt(level * (1 - level) / len(p))
        assert abs((p <= level).mean() - level) <= error, ((p <= level).mean(), level)
    assert (found.table.p_fwer >= found.table.p_unit).all()


def test_power_on_a_unit_only_the_trained_prompt_shows():
    trained, baseline, m = _pair(40, 2, 3, 200, seed=3)
    trained[:, 1, 2, 77] = (m + 0.3 * torch.randn(40, dtype=torch.float64)).float()
    found = contrast_from_activations(trained, baseline, m, n_permutations=199, seed=1)
    top = found.top_k(1).iloc[0]
    assert (top.layer, top.unit, top.slot) == (1, 77, 2)
    assert top.score_trained > 0.9 and top.p_fwer == pytest.approx(1 / 200)
    assert top.p_unit == pytest.approx(1 / 200)  # BH over 400 units needs more permutations
    assert (found.table.p_fwer <= 0.05).sum() <= 3  # the planted unit, and at most chance others


def test_no_prompt_reads_as_many_positions_as_the_prompt(qwen, prompt, examples):
    """The no-prompt baseline reads each example's last 4 positions before the slots (as many as
    the prompt's slots), from TransformerLens's run_with_cache on the unpadded text."""
    found = sklens.contrast(
        qwen, prompt, examples, metrics.label("a"), baseline="no_prompt", n_permutations=19,
        batch_size=5, progress=False,
    )  # fmt: skip
    a = np.array([e.meta["a"] for e in examples], dtype=float)
    names = {f"blocks.{L}.mlp.hook_post" for L in (0, 1)}
    acts = []
    for e in examples:
        ids, start, _ = reference_tokens(qwen, e, 0)
        with torch.no_grad():
            _, cache = qwen.run_with_cache(
                torch.tensor([ids[:start]]), names_filter=names.__contains__
            )
        acts.append([cache[f"blocks.{L}.mlp.hook_post"][0, start - 4 : start].T.double().numpy()
                     for L in (0, 1)])  # fmt: skip
    r = corrcoef_rows(np.array(acts), a)  # [layer, unit, position]
    np.testing.assert_allclose(found.table.score_baseline, r.max(-1).ravel(), atol=1e-5)
    assert set(found.table.slot_baseline) <= {0, 1, 2, 3}
    assert (found.table.slot_baseline == 3).any()  # the last is the scan's no-prompt position
    last = sklens.scan(qwen, None, examples, metrics.label("a"), progress=False).corr[..., 0]
    np.testing.assert_allclose(r[..., 3], last.numpy(), atol=1e-5)
    trained = corrcoef_rows(reference_slot_acts(qwen, prompt, examples, [0, 1]), a)
    np.testing.assert_allclose(found.table.score_trained, trained.max(-1).ravel(), atol=1e-5)
    assert "last 4 positions before the slots" in found.settings["compared"]


def test_untrained_baseline_is_the_prompts_own_initialisation(qwen, examples):
    start = sklens.SoftPrompt.init_for(qwen, 4, init="sample_vocab", seed=3)
    trained = sklens.SoftPrompt(start.config, start.embedding.detach() * 1.5 + 0.1)
    options = {"n_permutations": 19, "progress": False}
    found = sklens.contrast(qwen, trained, examples, "label:a", **options)
    again = sklens.SoftPrompt.init_for(qwen, 4, init="sample_vocab", seed=3)
    direct = sklens.contrast(qwen, trained, examples, "label:a", baseline=again, **options)
    pd.testing.assert_frame_equal(found.table, direct.table)
    assert found.settings["baseline"] == "untrained"
    assert "own initialisation (sample_vocab, seed 3)" in found.settings["compared"]


def test_a_loss_metric_is_the_trained_prompts_for_both_conditions(qwen, prompt, examples):
    """The baseline is correlated with the trained prompt's loss, not with its own pass's."""
    found = sklens.contrast(qwen, prompt, examples, "loss", baseline="no_prompt",
                            n_permutations=19, progress=False)  # fmt: skip
    losses = reference_losses(qwen, prompt, examples)
    given = sklens.contrast(qwen, prompt, examples, metrics.values(losses), baseline="no_prompt",
                            n_permutations=19, progress=False)  # fmt: skip
    np.testing.assert_allclose(found.table.score_trained, given.table.score_trained, atol=1e-4)
    np.testing.assert_allclose(found.table.score_baseline, given.table.score_baseline, atol=1e-4)
    own = sklens.scan(qwen, None, examples, "loss", progress=False)  # no prompt's own loss
    assert not np.allclose(own.metric_values.numpy(), losses, atol=1e-3)
    assert "computed in the trained prompt's pass" in found.settings["metric_values"]


def test_summary_rank_correlation_overlap_and_save_load(tmp_path):
    trained, baseline, m = _pair(30, 2, 3, 40, seed=5, rho=0.9)
    found = contrast_from_activations(trained, baseline, m, n_permutations=19)
    t = found.table
    rho = scipy.stats.spearmanr(t.score_trained.abs(), t.score_baseline.abs()).statistic
    assert found.rank_correlation == pytest.approx(rho)
    top_t = set(
        t.assign(s=t.score_trained.abs())
        .nlargest(5, "s")[["layer", "unit"]]
        .itertuples(index=False)
    )
    top_b = set(
        t.assign(s=t.score_baseline.abs())
        .nlargest(5, "s")[["layer", "unit"]]
        .itertuples(index=False)
    )
    assert found.top_k_overlap(5) == pytest.approx(len(top_t & top_b) / len(top_t | top_b))
    summary = found.summary(5)
    assert summary["n_fwer_0.05"] == int((t.p_fwer <= 0.05).sum()) and summary["n_selected"] == 5
    for who in ("trained", "baseline"):  # the thresholds by numpy on the table's scores
        scores = np.sort(np.abs(t[f"score_{who}"].to_numpy()))
        assert summary[f"top_k_threshold_{who}"] == pytest.approx(scores[-5])
        assert summary[f"median_abs_score_{who}"] == pytest.approx(np.median(scores))
    path = found.save(tmp_path / "c.csv")
    back = sklens.Contrast.load(path)
    pd.testing.assert_frame_equal(back.table, found.table, check_exact=False)
    assert back.settings == json.loads(json.dumps(found.settings))
    with pytest.raises(FileNotFoundError, match="saved sklens.Contrast"):
        sklens.Contrast.load(tmp_path / "none.csv")


@pytest.fixture
def no_pass(monkeypatch):
    """Every forward pass of the contrast fails the test: the checks come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(contrast_mod, "batched_pass", forbidden)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"baseline": "other_prompt"},
            "the baseline prompt has 5 slots but the trained prompt has 4",
        ),
        ({"metric": metrics.label("op", positive="times")}, "is constant"),
        ({"examples": 5}, "a contrast needs at least 8 examples"),
        (
            {"baseline": "random"},
            "baseline must be 'untrained', 'no_prompt' or a sklens.SoftPrompt",
        ),
        ({"n_permutations": 5}, "n_permutations must be at least 19"),
        ({"baseline": "long"}, "use baseline='untrained', or a prompt of fewer slots"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix_before_any_pass(qwen, prompt, examples, no_pass,
                                                              change, message):  # fmt: skip
    kwargs = {"metric": metrics.label("a"), "baseline": "untrained", "n_permutations": 19}
    kwargs |= {k: v for k, v in change.items() if k != "examples"}
    if kwargs["baseline"] == "other_prompt":
        kwargs["baseline"] = sklens.SoftPrompt.init_for(qwen, 5, seed=1)
    if kwargs["baseline"] == "long":  # more slots than any example has tokens before them
        prompt, kwargs["baseline"] = sklens.SoftPrompt.init_for(qwen, 200, seed=0), "no_prompt"
    examples = examples[: change.get("examples", len(examples))]
    metric = kwargs.pop("metric")
    with pytest.raises((ValueError, TypeError)) as err, without_type_checks():
        sklens.contrast(qwen, prompt, examples, metric, progress=False, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_activations_of_different_shapes_are_refused():
    trained, baseline, m = _pair(20, 1, 3, 4, seed=0)
    with (
        pytest.raises(ValueError, match="of the same examples, units and number of slots"),
        without_type_checks(),
    ):
        contrast_from_activations(trained, baseline[:, :, :2], m)


def test_run_with_contrast_writes_the_tables_summary_and_report(qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert main([*study_args(qwen_dir, out), "--contrast", "untrained,no_prompt"]) == 0
    neurons = pd.read_csv(out / "neurons.csv")
    table = pd.read_csv(out / "contrast.csv")
    scan = sklens.Scan.load(out / "scan.safetensors")
    score = scan.scores("max")[0].flatten().numpy()
    for name in ("untrained", "no_prompt"):
        part = pd.read_csv(out / f"contrast_{name}.csv")
        assert part.equals(table[table.baseline == name].reset_index(drop=True))
        assert len(part) == scan.corr.shape[0] * scan.corr.shape[1]
        # the selection split and the scan's metric values: score_trained is the scan's score
        np.testing.assert_allclose(part.score_trained, score, atol=1e-5)
    summary = json.loads((out / "summary.json").read_text())["contrast"]
    assert set(summary) == {"untrained", "no_prompt"}
    for name, s in summary.items():
        part = table[table.baseline == name]
        assert s["n_fwer_0.05"] == int((part.p_fwer <= 0.05).sum())
        assert s["n_selected"] == len(neurons) and s["top_k"] == 3 and s["n_permutations"] == 999
        assert {"rank_correlation", "top_k_overlap", "n_selected_fwer_0.05"} <= set(s)
        assert "selection split (n=12)" in s["examples"]
    assert main(["report", str(out)]) == 0  # the manifest lists the new files
    html = (out / "report.html").read_text()
    panel = html.split("Prompt specificity")[1]
    assert panel.count("data:image/png;base64") >= 2  # a scatter per baseline
    assert (
        f"{summary['no_prompt']['n_fwer_0.05']} of {summary['no_prompt']['n_units']} units" in panel
    )


def test_contrast_flag_is_checked_before_any_work(qwen_dir, tmp_path, capsys):
    assert main([*study_args(qwen_dir, tmp_path / "o"), "--contrast", "untrained,bogus"]) == 2
    assert "--contrast has unknown 'bogus'; use a comma-separated list of untrained, no_prompt" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="contrast names a baseline twice"):
        sklens.ConfirmConfig(contrast=("untrained", "untrained"))


def test_a_no_prompt_baseline_without_room_fails_before_training(
    qwen_dir, tmp_path, capsys, monkeypatch
):
    """Skill-Mix instructions are tens of tokens long: 200 slots leave too few before them."""
    forbid_work(monkeypatch, ("train_soft_prompt", "scan"))
    args = study_args(qwen_dir, tmp_path / "o")
    args[args.index("--n-slots") + 1] = "200"
    assert main([*args, "--contrast", "no_prompt"]) == 2
    err = capsys.readouterr().err
    assert "--contrast no_prompt reads the last 200 positions before the slots" in err
    assert "drop no_prompt or lower --n-slots" in err
