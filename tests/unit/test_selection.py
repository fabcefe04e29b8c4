"""The basis test (``sklens.basis_test``) and selection stability (``sklens.selection_stability``):
the units' r against numpy.corrcoef of run_with_cache activations and against the scan, the
rotation baseline against explicitly rotated data and on planted privileged and rotated axes, the
probe on planted data, the bootstrap against a numpy bootstrap and on planted units, bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import sklens
from sklens.confirm import selection as selection_mod
from sklens.confirm.selection import (
    CrossMoments,
    bootstrap_rows,
    haar_rotation,
    ridge_probe,
    rotation_best,
    stability_from_activations,
)
from sklens.scanning import metrics
from tests.helpers import reference_losses, reference_slot_acts, without_type_checks


@pytest.fixture
def prompt(qwen):
    return sklens.SoftPrompt.init_for(qwen, 4, seed=0)


def _covariance(x: np.ndarray, y: np.ndarray):
    """The covariances of data, streamed in uneven batches (as the pass folds them)."""
    moments = CrossMoments.zeros(x.shape[1])
    for rows in np.array_split(np.arange(len(y)), 5):
        moments = moments.merge(CrossMoments.of(torch.tensor(x[rows]), torch.tensor(y[rows])))
    return moments.covariance()


def _rotation_p(x: np.ndarray, y: np.ndarray, unit: int, n_rotations: int) -> float:
    cov = _covariance(x, y)
    axis = torch.zeros(x.shape[1], 1, dtype=torch.float64)
    axis[unit] = 1.0
    r = abs(float(cov.r(axis)[0]))
    best = rotation_best([cov], n_rotations, seed=0)[0]
    return (1 + int((best >= r).sum())) / (n_rotations + 1)


# -- the model-free machinery ----------------------------------------------------------------------


def test_streamed_covariance_equals_numpy_despite_an_offset():
    g = np.random.default_rng(0)
    x = g.normal(size=(90, 6)) * [1, 2, 3, 4, 5, 6] + 1e4
    y = x[:, 0] - 1e4 + g.normal(size=90)
    cov = _covariance(x, y)
    full = np.cov(np.column_stack([x, y]).T, bias=True)
    np.testing.assert_allclose(cov.xx.numpy(), full[:6, :6], rtol=1e-9)
    np.testing.assert_allclose(cov.xy.numpy(), full[:6, 6], rtol=1e-9)
    assert cov.yy == pytest.approx(full[6, 6], rel=1e-12) and cov.n == 90


def test_haar_rotations_are_orthogonal_and_unbiased():
    g = torch.Generator().manual_seed(0)
    q = haar_rotation(24, g)
    torch.testing.assert_close(q.T @ q, torch.eye(24, dtype=torch.float64), atol=1e-12, rtol=0)
    again = haar_rotation(24, torch.Generator().manual_seed(0))
    assert torch.equal(again, q)  # a seed gives the same basis
    corners = torch.stack([haar_rotation(3, g)[0, 0] for _ in range(600)])
    assert abs(float(corners.mean())) < 0.08  # the sign fix: no direction is preferred
    assert float(corners.square().mean()) == pytest.approx(1 / 3, abs=0.05)  # uniform on S²


def test_rotation_best_equals_explicitly_rotated_data():
    g = np.random.default_rng(1)
    x = g.normal(size=(70, 12)) @ g.normal(size=(12, 12)) + 3.0  # correlated, offset units
    y = x @ g.normal(size=12) + 4 * g.normal(size=70)
    best = rotation_best([_covariance(x, y)], 4, seed=7)[0]
    generator = torch.Generator().manual_seed(7)
    for b in range(4):
        z = x @ haar_rotation(12, generator).numpy()  # each column: one direction's projection
        brute = max(abs(np.corrcoef(z[:, j], y)[0, 1]) for j in range(12))
        assert float(best[b]) == pytest.approx(brute, abs=1e-10)


def test_a_planted_privileged_axis_beats_every_rotation():
    g = np.random.default_rng(2)
    x = g.normal(size=(300, 40))
    y = x[:, 5] + 0.5 * g.normal(size=300)
    assert _rotation_p(x, y, 5, 99) == pytest.approx(1 / 100)


def test_a_planted_rotated_direction_is_matched_by_rotations():
    """y driven by a random direction spread over all coordinates: even the best coordinate of
    the neuron basis is just one more basis, which random bases match or beat."""
    ps = []
    for seed in range(5):
        g = np.random.default_rng(10 + seed)
        x = g.normal(size=(300, 40))
        direction = g.normal(size=40)
        y = x @ (direction / np.linalg.norm(direction)) + 0.5 * g.normal(size=300)
        best_unit = int(np.argmax([abs(np.corrcoef(x[:, j], y)[0, 1]) for j in range(40)]))
        ps.append(_rotation_p(x, y, best_unit, 99))
    assert min(ps) > 0.05 and np.mean(ps) > 0.25


def _halves(x: np.ndarray, y: np.ndarray):
    fit = np.arange(len(y)) < len(y) // 2
    return _covariance(x[fit], y[fit]), _covariance(x[~fit], y[~fit])


def test_the_probe_reaches_the_true_correlation_on_held_out_data():
    g = np.random.default_rng(3)
    x = g.normal(size=(1200, 20))
    signal = x @ g.normal(size=20)
    y = signal + 0.6 * signal.std() * g.normal(size=1200)
    true = np.corrcoef(signal, y)[0, 1]
    r, penalty = ridge_probe(*_halves(x, y))
    assert r == pytest.approx(true, abs=0.03) and penalty > 0


@pytest.mark.parametrize("n, d", [(400, 30), (60, 128)])
def test_the_probe_does_not_fit_noise(n, d):
    """On pure noise the held-out r stays near 0, also with fewer examples than units (where an
    in-sample fit reaches 1)."""
    rs = []
    for seed in range(4):
        g = np.random.default_rng(20 + seed)
        rs.append(ridge_probe(*_halves(g.normal(size=(n, d)), g.normal(size=n)))[0])
    assert max(abs(r) for r in rs) < 0.35


# -- the basis test on a model ---------------------------------------------------------------------


def test_unit_r_equals_numpy_corrcoef_and_the_scan(qwen, prompt, examples):
    a = np.array([e.meta["a"] for e in examples], dtype=float)
    scan = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    top = scan.top_k(4, reduce="absmax")
    result = sklens.basis_test(
        qwen, prompt, examples, metrics.label("a"), top, n_rotations=30, batch_size=5,
        progress=False,
    )  # fmt: skip
    table = result.table
    assert list(table.columns) == [
        "layer", "unit", "slot", "r_unit", "rotation_best_mean", "rotation_best_q95",
        "p_rotation", "probe_r_heldout", "n_examples",
    ]  # fmt: skip
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])  # [N, layer, d_mlp, slot]
    for row in table.itertuples():
        expected = np.corrcoef(acts[:, row.layer, row.unit, row.slot], a)[0, 1]
        assert row.r_unit == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(table.r_unit, top["corr"], atol=1e-6)
    np.testing.assert_allclose(table.rotation_best_mean, result.rotation_best.mean(1), rtol=1e-12)
    ps = table.p_rotation.to_numpy()
    assert ((ps >= 1 / 31) & (ps <= 1)).all() and (table.n_examples == len(examples)).all()
    assert table.probe_r_heldout.between(-1, 1).all()
    assert result.settings["n_fit"] + result.settings["n_test"] == len(examples)


def test_a_loss_metric_comes_from_the_same_pass(qwen, prompt, examples):
    scan = sklens.scan(qwen, prompt, examples, metrics.loss(), progress=False)
    top = scan.top_k(3)
    result = sklens.basis_test(
        qwen, prompt, examples, metrics.loss(), top, n_rotations=5, progress=False
    )
    np.testing.assert_allclose(result.table.r_unit, top["corr"], atol=1e-5)
    losses = reference_losses(qwen, prompt, examples)
    acts = reference_slot_acts(qwen, prompt, examples, [0, 1])
    for row in result.table.itertuples():
        expected = np.corrcoef(acts[:, row.layer, row.unit, row.slot], losses)[0, 1]
        assert row.r_unit == pytest.approx(expected, abs=1e-4)


def test_basis_test_refuses_bad_input_before_any_pass(qwen, prompt, examples, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a pass started before the arguments were checked")

    monkeypatch.setattr(selection_mod, "batched_pass", forbidden)
    units = pd.DataFrame({"layer": [1], "unit": [3], "slot": [2]})

    def run(exs=examples, table=units, **kwargs):
        sklens.basis_test(qwen, prompt, exs, metrics.label("a"), table, progress=False, **kwargs)

    with pytest.raises(ValueError, match="basis_test needs each unit's slot"):
        run(table=units[["layer", "unit"]])
    with without_type_checks(), pytest.raises(ValueError, match="basis_test needs each unit's"):
        run(table=[(1, 3)])
    with pytest.raises(ValueError, match="needs at least 8 examples"):
        run(exs=examples[:7])
    with pytest.raises(ValueError, match=r"unit \(1, 999\) is outside the model's site"):
        run(table=units.assign(unit=[999]))
    with pytest.raises(ValueError, match="slot 4, but the prompt has slots 0..3"):
        run(table=units.assign(slot=[4]))
    with pytest.raises(ValueError, match="n_rotations must be at least 1"):
        run(n_rotations=0)
    with pytest.raises(ValueError, match="names no unit"):
        run(table=units.iloc[:0])


# -- selection stability ---------------------------------------------------------------------------


def _scan_of(acts4: torch.Tensor, y: torch.Tensor, n_candidates: int, reduce: str):
    """The candidates of a scan of ``acts4 [N, 1, slot, unit]`` and their activations
    ``[N, candidate, slot]`` in the candidates' order."""
    candidates = sklens.scan_activations(acts4, y).top_k(n_candidates, reduce)
    ids = torch.tensor(candidates.unit.to_numpy())
    return candidates, acts4[:, 0][:, :, ids].permute(0, 2, 1)


def _numpy_stays(acts: np.ndarray, y: np.ndarray, rows: np.ndarray, k: int, reduce: str):
    """Stay shares and mean ranks of the first ``k`` candidates, one resample at a time."""
    ranks = []
    for idx in rows:
        a, v = acts[idx], y[idx]
        r = np.array([[np.corrcoef(a[:, c, s], v)[0, 1] for s in range(a.shape[2])]
                      for c in range(a.shape[1])])  # fmt: skip
        lo, hi = r.min(1), r.max(1)
        score = hi if reduce == "max" else np.where(np.abs(lo) > np.abs(hi), lo, hi)
        order = np.argsort(-np.abs(score), kind="stable")
        ranks.append(np.argsort(order, kind="stable")[:k] + 1)
    ranks = np.array(ranks)
    return (ranks <= k).mean(0), ranks.mean(0)


@pytest.mark.parametrize("reduce", ["max", "absmax"])
def test_stay_shares_equal_a_numpy_bootstrap(reduce):
    g = torch.Generator().manual_seed(4)
    acts4 = torch.randn(40, 1, 3, 25, generator=g)
    y = acts4[:, 0, 1, :4].double() @ torch.tensor([1.0, -0.8, 0.6, 0.4], dtype=torch.float64)
    y = y + torch.randn(40, generator=g, dtype=torch.float64)
    candidates, acts = _scan_of(acts4, y, 25, reduce)
    rows = bootstrap_rows(60, 40, seed=3)
    result = stability_from_activations(acts, y, candidates, k=5, reduce=reduce, resamples=rows)
    stays, ranks = _numpy_stays(acts.double().numpy(), y.numpy(), rows.numpy(), 5, reduce)
    np.testing.assert_allclose(result.table.stay_share, stays)
    np.testing.assert_allclose(result.table.mean_rank, ranks)
    assert result.mean_stay == pytest.approx(stays.mean())


def test_planted_strong_unit_stays_and_a_noise_unit_rarely_does():
    g = torch.Generator().manual_seed(5)
    acts4 = torch.randn(80, 1, 2, 200, generator=g)
    y = acts4[:, 0, 0, 7].double() + 0.4 * torch.randn(80, generator=g, dtype=torch.float64)
    candidates, acts = _scan_of(acts4, y, 200, "max")
    result = stability_from_activations(
        acts, y, candidates, k=2, resamples=bootstrap_rows(200, 80, seed=0), outsiders=False
    )
    strong, noise = result.table.itertuples()
    assert strong.unit == 7 and strong.stay_share >= 0.99
    assert noise.stay_share < 0.35
    assert result.outside_share == 0.0


@pytest.mark.parametrize("reduce", ["max", "absmax"])
def test_the_original_order_reproduces_the_scan(qwen, prompt, examples, reduce):
    scan = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)
    candidates = scan.top_k(40, reduce)
    acts = sklens.slot_activations(qwen, prompt, examples, candidates)
    result = stability_from_activations(
        acts, scan.metric_values, candidates, k=6, reduce=reduce,
        resamples=torch.arange(len(examples))[None],
    )  # fmt: skip
    top = scan.top_k(6, reduce)
    assert result.table[["layer", "unit", "slot"]].equals(top[["layer", "unit", "slot"]])
    np.testing.assert_allclose(result.scores[0].numpy(), top.score, atol=1e-6)
    assert result.ranks[0].tolist() == [1, 2, 3, 4, 5, 6]
    assert (result.table.stay_share == 1.0).all()


def test_selection_stability_of_a_loss_scan(qwen, prompt, examples):
    scan = sklens.scan(qwen, prompt, examples, metrics.loss(), progress=False)
    kwargs = {"k": 3, "n_boot": 40, "n_candidates": 30, "progress": False}
    fixed = sklens.selection_stability(qwen, prompt, examples, scan.metric_values, scan, **kwargs)
    named = sklens.selection_stability(qwen, prompt, examples, metrics.loss(), scan, **kwargs)
    assert list(fixed.table.columns) == [
        "layer", "unit", "slot", "score", "stay_share", "mean_rank"
    ]  # fmt: skip
    assert fixed.table.equals(named.table)  # the loss is the scan's, not recomputed
    assert fixed.table[["layer", "unit", "slot"]].equals(scan.top_k(3)[["layer", "unit", "slot"]])
    assert fixed.table.stay_share.between(0, 1).all() and 0 <= fixed.outside_share <= 1
    assert fixed.scores.shape == (40, 3) and fixed.settings["n_candidates"] == 30


def test_selection_stability_refuses_bad_input(qwen, prompt, examples):
    scan = sklens.scan(qwen, prompt, examples, metrics.label("a"), progress=False)

    def run(exs=examples, metric=None, the_scan=scan, **kwargs):
        metric = metrics.label("a") if metric is None else metric
        sklens.selection_stability(qwen, prompt, exs, metric, the_scan, progress=False, **kwargs)

    with pytest.raises(ValueError, match="not the ones the scan ran on"):
        run(exs=examples[::-1])
    with pytest.raises(ValueError, match="does not give the scan's metric values"):
        run(metric=metrics.label("big"))
    with pytest.raises(ValueError, match="k must be at least 1"):
        run(k=0)
    with pytest.raises(ValueError, match="n_candidates must be at least 5"):
        run(k=5, n_candidates=4)
    with without_type_checks(), pytest.raises(TypeError, match="scan must be a sklens.Scan"):
        run(the_scan=scan.top_k(5))
    other = sklens.SoftPrompt.init_for(qwen, 3, seed=0)
    with pytest.raises(ValueError, match="not this prompt's 3 slots"):
        sklens.selection_stability(qwen, other, examples, metrics.label("a"), scan, progress=False)
    grouped = sklens.scan(
        qwen, prompt, examples, metrics.label("a"), permutation_groups="op", progress=False
    )
    with pytest.raises(ValueError, match="within-group"):
        run(the_scan=grouped)
