"""The paper's three studies (demos/rq*_*.py) at --size tiny on the tiny model: each is the
library's pipeline (``sklens.run_study``) with the study's settings, plus its figures and
``study.json``; the docs/reproduction.md generator on the stored runs; and the demos that go on
from a finished run. Offline: Skill-Mix and HANS are generated, arithmetic in BigBench's format.
"""

from __future__ import annotations

import importlib
import json
import math
import sys

import pandas as pd
import pytest

import sklens
from tests.helpers import ROOT

pytestmark = [pytest.mark.slow]

DEMOS = ROOT / "demos"
SCRIPTS = {"rq1": "rq1_skillmix", "rq2": "rq2_hans", "rq3": "rq3_arithmetic"}
PNG = b"\x89PNG\r\n\x1a\n"


def _demo(name: str):
    if str(DEMOS) not in sys.path:
        sys.path.insert(0, str(DEMOS))
    return importlib.import_module(name)


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.fixture(scope="module")
def runs(qwen_dir, tmp_path_factory):
    """The three demos at tiny size; RQ1 also copies its figures to a stand-in docs/ folder."""
    root = tmp_path_factory.mktemp("demos")
    reproduce = _demo("reproduce")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reproduce, "DOCS", root / "docs")
        (root / "docs").mkdir()
        for key, script in SCRIPTS.items():
            argv = ["--size", "tiny", "--model", str(qwen_dir), "--out", str(root / key), "--quiet"]
            argv += ["--docs"] if key == "rq1" else []
            module = _demo(script)
            out[key] = module.main(module.STUDY, argv)
    return out


def test_rq1_negative_control_permutes_the_skill_and_records_it(qwen_dir, tmp_path):
    """--negative-control runs the same study with the label permuted: the run records it, and
    the selection split's labels are a permutation of the real run's on the same examples."""
    module = _demo(SCRIPTS["rq1"])
    argv = ["--size", "tiny", "--model", str(qwen_dir), "--quiet", "--negative-control"]
    folder = module.main(module.STUDY, [*argv, "--out", str(tmp_path / "rq1-shuffled")])
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["data"]["source"]["shuffled_label"] == "skill"
    assert summary["config"]["shuffle_label"] == "skill"
    study = json.loads((folder / "study.json").read_text())
    assert "--negative-control" in study["command"]


def test_rq3_within_operations_scans_the_within_group_r(qwen_dir, tmp_path):
    """--within: the same RQ3 study scanning the loss within each operation."""
    module = _demo(SCRIPTS["rq3"])
    argv = ["--size", "tiny", "--model", str(qwen_dir), "--quiet", "--within"]
    folder = module.main(module.STUDY, [*argv, "--out", str(tmp_path / "rq3-within")])
    summary = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["config"]["scan"]["permutation_groups"] == "operation"
    scan = sklens.Scan.load(folder / "run" / "scan.safetensors")
    assert scan.settings.permutation_groups == "operation" and scan.marginal_corr is not None


def _read(runs, key):
    folder = runs[key]
    return (
        json.loads((folder / "study.json").read_text()),
        json.loads((folder / "run" / "summary.json").read_text()),
    )


@pytest.mark.parametrize("key", sorted(SCRIPTS))
def test_each_study_runs_every_stage_of_the_pipeline(runs, key):
    study, summary = _read(runs, key)
    module = _demo(SCRIPTS[key])
    assert summary["config"] == _settings(module.STUDY, summary)
    assert study["paper"]["threshold"] == {"rq1": 0.83, "rq2": 0.43, "rq3": 0.93}[key]
    assert study["command"].startswith(f"python demos/{SCRIPTS[key]}.py --size tiny")
    s = summary["sparsity"]
    assert _finite(s["top_k_threshold"], s["null_max_95"]) and s["n_permutations"] == 200
    scores = _abs_scores(runs[key])
    assert study["paper"]["frac_above_threshold"] == pytest.approx(
        (scores >= study["paper"]["threshold"]).mean()
    )
    h = summary["held_out"]
    assert h["n_heldout"] == 24 and _finite(h["mean_r_heldout"])
    assert _finite(summary["stability"]["mean_jaccard"], summary["stability"]["mean_rank_corr"])
    assert {"untrained", "no_prompt"} == set(summary["contrast"])
    assert summary["attribution"] is not None and summary["causal"]
    assert set(pd.read_csv(runs[key] / "run" / "dose_response.csv")["k"]) == {1, 2}
    for rel in study["figures"].values():
        assert (runs[key] / rel).read_bytes()[:8] == PNG
    groupings = {"rq1": ["skill"], "rq2": ["heuristic"], "rq3": ["shortcut", "operation"]}[key]
    assert {f"kde_{g}_{split}" for g in groupings for split in ("select", "heldout")} <= set(
        study["figures"]
    )


def _settings(study, summary):
    """The study's tiny settings as the run wrote them (model and resolved backend its own)."""
    from dataclasses import asdict, replace

    ran = summary["config"]
    config = replace(
        study.at("tiny"), model=ran["model"], backend=ran["backend"], dtype=ran["dtype"]
    )
    return json.loads(json.dumps(asdict(config)))


def _abs_scores(folder):
    import sklens

    scan = sklens.Scan.load(folder / "run" / "scan.safetensors")
    score = scan.scores("max")[0].abs().flatten()
    return score[~score.isnan()].numpy()


def test_rq2_measures_accuracy_and_flips_hans_twins(runs):
    _, summary = _read(runs, "rq2")
    causal = pd.read_csv(runs["rq2"] / "run" / "causal.csv")
    assert causal.accuracy_base.notna().all()  # the HANS labels are each pair's choices
    twin = summary["counterfactual"]["hans_twin"]
    assert twin["used"] == 8 and "choice_changed" in twin["behaviour"]


def test_rq3_asks_the_shortcut_questions_as_stages(runs):
    _, summary = _read(runs, "rq3")
    behaviour = pd.read_csv(runs["rq3"] / "run" / "behaviour.csv")
    assert set(behaviour.prompt) == {"trained", "no_prompt"}
    assert summary["behaviour"]["where"] == "operation=multiplication"
    assert set(summary["behaviour"]["difference"]["trained"]) >= {"loss", "accuracy"}
    assert summary["counterfactual"]["last_digit_decides"]["used"] == 8
    causal = pd.read_csv(runs["rq3"] / "run" / "causal.csv")
    assert causal.accuracy_base.isna().all() and causal.d_loss.notna().all()  # loss only


def test_docs_flag_copies_pngs(runs):
    copied = sorted((runs["rq1"].parent / "docs").glob("rq1_*.png"))
    assert len(copied) == 4 and all(p.read_bytes()[:8] == PNG for p in copied)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "tpu"], "rq1: device"),
        (["--data", "/nowhere/skills.jsonl"], "rq1: data /nowhere/skills.jsonl: does not exist"),
    ],
)
def test_bad_arguments_stop_before_any_model_work(tmp_path, monkeypatch, extra, message):
    import sklens

    def forbidden(*args, **kwargs):
        raise AssertionError("the study started before its settings were checked")

    monkeypatch.setattr(sklens, "run_study", forbidden)
    module = _demo("rq1_skillmix")
    with pytest.raises(SystemExit, match=message):
        module.main(module.STUDY, ["--out", str(tmp_path), *extra])


def test_reproduction_doc_regenerates_from_the_stored_runs(tmp_path):
    """docs/reproduction.md's table comes from the stored results.json files: regenerated from
    them, it is the committed one."""
    stored = ROOT / "docs" / "reproduction"
    budget = [str(stored / k) for k in ("rq1", "rq2", "rq3")]
    full = [str(stored / f"{k}-full") for k in ("rq1", "rq2", "rq3")]
    doc = _demo("make_reproduction_doc").main(
        [*budget, "--full", *full, "--out", str(tmp_path / "r.md")]
    )

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| RQ")]

    committed = (ROOT / "docs" / "reproduction.md").read_text()
    assert table(doc.read_text()) == table(committed) and len(table(committed)) > 30


def test_doc_generator_names_missing_runs(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        _demo("make_reproduction_doc").main([str(tmp_path / "nowhere")])


def test_load_bigbench_refuses_a_folder_without_tasks(tmp_path):
    import sklens

    with pytest.raises(ValueError, match="neither a BigBench task.json"):
        sklens.data.load_bigbench(tmp_path)
