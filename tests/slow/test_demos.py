"""The paper's three studies (demos/rq*_*.py) at --size tiny on the tiny model: each is the
library's pipeline (``sklens.run_study``) with the study's settings, plus its figures and
``study.json``; the docs/reproduction.md generator on those runs and on planted copies of
them; and the demos that go on from a finished run. Offline: Skill-Mix and HANS are
generated, arithmetic in BigBench's format.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import sys

import numpy as np
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


def _doc(folders, tmp_path, *flags) -> str:
    """docs/reproduction.md generated from ``folders`` into ``tmp_path``; its text."""
    doc = tmp_path / "doc" / "reproduction.md"
    _demo("make_reproduction_doc").main([*map(str, folders), "--doc", str(doc), *flags])
    return doc.read_text()


def _planted(runs, key, tmp_path, name, edit):
    """A copy of the tiny ``key`` run whose summary.json ``edit`` changed (the doc reads the
    summary as it is, so a planted number reaches the doc's sentences)."""
    folder = tmp_path / name
    shutil.copytree(runs[key], folder)
    path = folder / "run" / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))
    return folder


def _account(text: str) -> list[str]:
    """The account's sentences: the bullets between its heading and the figures."""
    part = text.split("## The account")[1].split("## Figures")[0]
    return [line for line in part.splitlines() if line.startswith("- ")]


def test_reproduction_doc_regenerates_from_the_tiny_runs(runs, tmp_path):
    """The doc from the three tiny runs: labelled a smoke run, with each run's provenance, one
    table per study with the paper beside the run, and an account whose every sentence names
    its source and avoids the old account's over-claims."""
    text = _doc([runs[k] for k in sorted(runs)], tmp_path)
    assert "smoke-test numbers" in text
    commit = json.loads((runs["rq1"] / "run" / "summary.json").read_text())["versions"]
    assert f"`{commit['sklens commit']}`" in text and "float32" in text
    for key in ("RQ1", "RQ2", "RQ3"):
        assert f"| quantity | paper (Qwen1.5-1.8B-Chat) | {key} tiny | source |" in text
    assert "units of 10 (" in text and "numeric chance" in text and "floor 0.250" in text
    sentences = _account(text)
    assert len(sentences) > 30
    assert all(re.search(r"\(`[^`]+`\)\.$", s) or "not scored" in s for s in sentences)
    lowered = text.lower()
    for claim in ("no causal role", "not something the prompt learned", "cannot encode"):
        assert claim not in lowered
    assert (tmp_path / "doc" / "reproduction" / "rq1-tiny" / "summary.json").exists()
    summary = json.loads((runs["rq1"] / "run" / "summary.json").read_text())
    total = sum(summary["cpu_s_all_attempts"].values())
    cost = text.split("## What each run cost")[1].split("##")[0]
    assert f"| RQ1 tiny | data {summary['cpu_s']['data']:,.0f}, " in cost
    assert f"| {total:,.0f} s | 1 | " in cost


def test_a_resumed_runs_cost_counts_every_attempt_and_no_wall_time(runs, tmp_path):
    every = {"train": 3000.0, "scan": 200.0, "causal": 5000.0}
    resumed = _planted(
        runs, "rq1", tmp_path, "two",
        lambda s: s.update(cpu_s_all_attempts=every, attempts=2, interrupted_cpu_s=1200.0),
    )  # fmt: skip
    cost = _doc([resumed], tmp_path).split("## What each run cost")[1].split("##")[0]
    assert (
        "| train 3,000, scan 200, causal 5,000 | 8,200 s | 2 | not one process (2 attempts) |"
        in cost
    )


def _causal_p(summary, p):
    summary["causal"][0].update(p_loss=p, n_random=199)


def _held_out(summary, n):
    summary["held_out"].update(n_adjusted_ci_excludes_0=n)


def _contrast(summary, n):
    summary["contrast"]["untrained"].update({"n_selected_fwer_0.05": n})


@pytest.mark.parametrize(
    ("edit", "weak", "strong", "null", "found"),
    [
        (_causal_p, 0.30, 0.03, "not told apart from the random sets", "it differs from the"),
        (_causal_p, 0.30, 0.005, "Not telling the top-K apart", "differs from the random sets' at"),
        (_held_out, 0, 3, "no unit is told apart from r = 0", "3 of the 10 intervals"),
        (_contrast, 0, 4, "none of the 10 selected units is told", "4 of the 10 selected units"),
    ],
)
def test_a_sentence_changes_when_its_number_crosses_its_threshold(
    runs, tmp_path, edit, weak, strong, null, found
):
    """A planted number on either side of its threshold: the causal rank p against 0.05, held-out
    intervals excluding 0 or none, selected units past the contrast's null or none."""
    texts = {}
    for value in (weak, strong):
        folder = _planted(runs, "rq1", tmp_path, f"v{value}", lambda s, v=value: edit(s, v))
        texts[value] = "\n".join(_account(_doc([folder], tmp_path / f"doc{value}")))
    assert null in texts[weak] and found not in texts[weak]
    assert found in texts[strong] and null not in texts[strong]


def test_enrichment_finds_a_planted_link_of_score_and_effect_and_none_without():
    """The doc's enrichment test on planted units: effects that follow |score| are enriched at
    the permutation floor with ρ = 1; effects drawn apart from the scores are not."""
    evidence = _demo("reproduction_evidence")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 500))
    linked = evidence.enrichment(scores, np.abs(scores) * 1e-3)
    assert linked["rho"] == pytest.approx(1.0) and linked["ratio"] > 2
    assert linked["p"] == pytest.approx(1 / (evidence.N_SETS + 1))
    apart = evidence.enrichment(scores, rng.exponential(size=(4, 500)))
    assert abs(apart["rho"]) < 0.1 and apart["p"] > 0.05
    ranks = np.argsort(np.argsort(-np.abs(scores.ravel())))  # by hand: the top 100's median
    effects = rng.exponential(size=2000)
    assert evidence.enrichment(scores, effects)["ratio"] == pytest.approx(
        np.median(effects[ranks < 100]) / np.median(effects)
    )


def test_the_majority_answer_is_read_only_off_a_label_set():
    evidence = _demo("reproduction_evidence")
    assert evidence.majority(["entailment"] * 23 + ["non-entailment"] * 17) == (
        "entailment", pytest.approx(23 / 40),
    )  # fmt: skip
    assert evidence.majority([str(n) for n in range(40)]) is None  # arithmetic: no majority


def test_the_evidence_sentences_read_the_runs_files(runs, tmp_path):
    """Enrichment from the saved scan and attribution, the dose-response by k, and the
    accuracy against the majority answer, which changes side with a planted accuracy."""
    text = "\n".join(_account(_doc([runs["rq2"]], tmp_path / "d")))
    assert "have Spearman ρ = " in text and "random sets of 100" in text
    assert "Ablating the top k by correlation changes the loss by k = 1:" in text
    assert "against 3 random sets" in text  # the tiny size's dose_random
    assert "causal-split questions" in text
    sides = {}
    for acc in (1.0, 0.0):
        folder = _planted(runs, "rq2", tmp_path, f"acc{acc}",
                          lambda s, a=acc: s["causal"][0].update(accuracy_base=a))  # fmt: skip
        sides[acc] = "\n".join(_account(_doc([folder], tmp_path / f"acc-doc{acc}")))
    assert "1.000 of the" in sides[1.0] and "questions, above the" in sides[1.0]
    assert "questions, below the" in sides[0.0]


def test_mixed_commits_are_refused_unless_allowed(runs, tmp_path):
    other = _planted(
        runs, "rq2", tmp_path, "rq2-old",
        lambda s: s["versions"].update({"sklens commit": "0123abc"}),
    )  # fmt: skip
    with pytest.raises(SystemExit, match="different sklens commits") as refused:
        _doc([runs["rq1"], other], tmp_path)
    assert "0123abc" in str(refused.value) and "--allow-mixed-commits" in str(refused.value)
    assert str(other) in str(refused.value)
    text = _doc([runs["rq1"], other], tmp_path, "--allow-mixed-commits")
    assert "These runs were made by different sklens commits" in text.split("## Provenance")[0]


def test_a_dirty_commit_is_called_out(runs, tmp_path):
    dirty = _planted(
        runs, "rq1", tmp_path, "rq1-dirty",
        lambda s: s["versions"].update({"sklens commit": "0123abc+dirty"}),
    )  # fmt: skip
    text = _doc([dirty], tmp_path)
    assert "uncommitted changes:** RQ1 tiny (`0123abc+dirty`)" in text.split("## Provenance")[0]


def test_the_controls_are_told_apart_by_their_settings(runs, tmp_path):
    """A run with a permuted label is RQ1's negative control and one with a grouped null RQ3's
    within-operation run, each set beside the main run of its study."""
    shuffled = _planted(
        runs, "rq1", tmp_path, "a", lambda s: s["config"].update(shuffle_label="skill")
    )
    within = _planted(
        runs, "rq3", tmp_path, "b",
        lambda s: s["config"]["scan"].update(permutation_groups="operation"),
    )  # fmt: skip
    text = _doc([within, shuffled, runs["rq1"], runs["rq3"]], tmp_path)
    assert "| RQ1 tiny | RQ1 negative control (tiny) | source |" in text
    assert "| RQ3 tiny | RQ3 within operation (tiny) | source |" in text
    assert "With `skill` permuted among the examples" in text
    assert "Within each operation" in text and "in RQ3 tiny" in text


def test_doc_generator_names_missing_runs(tmp_path):
    with pytest.raises(SystemExit, match="no study.json in"):
        _demo("make_reproduction_doc").main([str(tmp_path / "nowhere")])


def test_load_bigbench_refuses_a_folder_without_tasks(tmp_path):
    import sklens

    with pytest.raises(ValueError, match="neither a BigBench task.json"):
        sklens.data.load_bigbench(tmp_path)
