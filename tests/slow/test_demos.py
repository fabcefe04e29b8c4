"""The paper's three studies (demos/rq*_*.py) at --size tiny on the tiny model, and the
docs/reproduction.md generator on their outputs: every phase runs and writes real content.

Offline: Skill-Mix and HANS are generated, and RQ3 uses ``--data generated`` (a small
BigBench-shaped pool) because BigBench itself comes from PyPI.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys

import pandas as pd
import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow]

DEMOS = ROOT / "demos"
SCRIPTS = {"rq1": "rq1_skillmix", "rq2": "rq2_hans", "rq3": "rq3_arithmetic"}
PHASES = {"data", "load_model", "train", "scan", "confirm", "causal", "stability", "figures"}
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
        mp.setattr(reproduce, "REPO", root)
        mp.setattr(reproduce, "DOCS", root / "docs")
        for key, script in SCRIPTS.items():
            argv = ["--size", "tiny", "--model", str(qwen_dir), "--out", str(root / key), "--quiet"]
            argv += ["--docs"] if key == "rq1" else []
            argv += ["--data", "generated"] if key == "rq3" else []
            module = _demo(script)
            module.main(module.STUDY, f"{script}.py", argv)
            out[key] = root / key
    return out


@pytest.mark.parametrize("key", sorted(SCRIPTS))
def test_demo_writes_results_with_every_number(runs, key):
    results = json.loads((runs[key] / "results.json").read_text())
    s = results["sparsity"]
    assert _finite(s["top_k_threshold"], s["null_max_95"], s["frac_fwer_05"], s["frac_p_neuron_05"])
    assert s["n_permutations"] >= 200 and 0 <= s["frac_fwer_05"] <= 1
    assert s["frac_above_top_k"] == pytest.approx(10 / s["n_neurons"])  # no ties at the threshold
    assert results["paper"]["threshold"] == {"rq1": 0.83, "rq2": 0.43, "rq3": 0.93}[key]
    h = results["held_out"]
    assert h["top_r_lo"] <= h["top_r_heldout"] <= h["top_r_hi"]
    assert h["n_heldout"] == results["data"]["splits"]["confirm"] and h["n_select"] > 0
    (mode,) = results["causal"]["modes"]
    assert _finite(mode["d_loss"], mode["random_d_loss_median"]) and 0 < mode["p_loss"] <= 1
    st = results["stability"]
    assert len(results["settings"]["seeds"]) >= 3 and _finite(
        st["mean_overlap"], st["mean_jaccard"]
    )
    assert len(st["consensus"]) == 10
    for seed in results["settings"]["seeds"]:
        assert results["training"]["seeds"][f"seed{seed}"]["plateau"]["n_evaluations"] >= 2
    assert PHASES <= set(results["timings_s"])
    assert len(results["top_neurons"]) == 10 and results["command"].startswith("python demos/")
    for rel in results["figures"].values():
        assert (runs[key] / rel).read_bytes()[:8] == PNG
    assert {f"{n}_select" for n in ("kde_" + g for g in _groupings(key))} <= set(results["figures"])
    summary = (runs[key] / "summary.md").read_text()
    assert "| study | quantity |" in summary and "smoke run" in summary


def _groupings(key: str) -> list[str]:
    return {"rq1": ["skill"], "rq2": ["heuristic"], "rq3": ["shortcut", "operation"]}[key]


def test_label_studies_report_auroc_and_rq2_accuracy(runs):
    for key in ("rq1", "rq2"):
        h = json.loads((runs[key] / "results.json").read_text())["held_out"]
        assert h["top_auroc_lo"] <= h["top_auroc"] <= h["top_auroc_hi"]
    (mode,) = json.loads((runs["rq2"] / "results.json").read_text())["causal"]["modes"]
    assert _finite(mode["accuracy_per_token_base"], mode["d_accuracy_per_token"])


def test_rq3_answers_the_shortcut_questions(runs):
    results = json.loads((runs["rq3"] / "results.json").read_text())
    extra = results["rq3"]
    for behaviour in (extra["behaviour"], extra["behaviour_no_prompt"]):
        acc = behaviour["correct_per_token"]
        assert behaviour["n_shortcut"] > 0 and behaviour["n_no_shortcut"] > 0
        assert 0 <= acc["shortcut"]["mean"] <= 1 and isinstance(behaviour["uses_shortcut"], bool)
    assert extra["manual_step"]["n"] == 10
    least = pd.read_csv(runs["rq3"] / "least_activating.csv")
    assert len(least) == 10 and least.activation.is_monotonic_increasing
    ranked = extra["properties"]
    assert ranked and all(0 <= r["mean_explained"] <= 1 for r in ranked)
    assert [r["mean_explained"] for r in ranked] == sorted(
        (r["mean_explained"] for r in ranked), reverse=True
    )
    source = results["data"]["source"]  # the 2-digit files it wrote, with their sha256
    assert source["kind"] == "files" and source["path"].endswith("data") and source["sha256"]
    top = pd.read_csv(runs["rq3"] / "neurons.csv")
    explained = pd.read_csv(runs["rq3"] / "explanations.csv")
    assert len(extra["explanations"]) == len(top)
    assert set(explained.unit) == {
        f"L{r.layer} N{r.neuron} @slot{r.slot}" for r in top.itertuples()
    }
    assert set(extra["counterfactual"]) == {"last_digit_decides", "answer_only_negative"}
    tested = [k for k, v in extra["counterfactual"].items() if "behaviour" in v]
    assert tested  # the generated multiplications can be edited
    for name in tested:
        record = extra["counterfactual"][name]
        units = pd.read_csv(runs["rq3"] / f"counterfactual_{name}.csv")
        assert len(units) == len(top) and 5 <= record["used"] <= 8  # tiny: n_causal = 8
        assert record["max_abs_d_std"] == pytest.approx(units.d_std.abs().max())
        assert "loss" in record["behaviour"]


def test_docs_flag_copies_pngs(runs):
    copied = json.loads((runs["rq1"] / "results.json").read_text())["docs_figures"]
    assert copied and all(p.startswith("docs/rq1_") and p.endswith(".png") for p in copied)
    assert all((runs["rq1"].parent / p).read_bytes()[:8] == PNG for p in copied)


def test_reproduction_doc_has_the_table_figures_and_account(runs, tmp_path):
    make_doc = _demo("make_reproduction_doc")
    doc = make_doc.main([str(runs[k]) for k in sorted(runs)] + ["--out", str(tmp_path / "r.md")])
    text = doc.read_text()
    assert "| study | quantity | paper (Qwen1.5-1.8B-Chat) | sklens |" in text
    for key, threshold in (("RQ1", "0.83"), ("RQ2", "0.43"), ("RQ3", "0.93")):
        assert f"| {key} | top-10 threshold of \\|score\\| | {threshold} |" in text
    assert "smoke-test numbers, not a reproduction" in text
    assert "Smoke runs carry no evidence" in text and "python demos/rq3_arithmetic.py" in text
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert len(links) >= 8 and all((doc.parent / link).resolve().exists() for link in links)
    for key in ("rq1", "rq2", "rq3"):  # the numbers behind the doc are kept beside it
        kept = json.loads((tmp_path / "reproduction" / key / "results.json").read_text())
        assert kept == json.loads((runs[key] / "results.json").read_text())
        assert (tmp_path / "reproduction" / key / "heldout.csv").exists()


def test_reproduction_doc_puts_full_size_runs_beside_the_budget_ones(runs, tmp_path):
    """``--full``: one more column, rows matched by their results.json key, the plain account read
    from the full runs, and CPU time per phase beside the wall time (a paused run's wall time is
    not its cost)."""
    make_doc = _demo("make_reproduction_doc")
    full = []
    for key in sorted(runs):
        results = json.loads((runs[key] / "results.json").read_text())
        assert set(results["cpu_s"]) == set(results["timings_s"])  # every phase has both
        results["size"] = "full"
        results["sparsity"]["top_k_threshold"] = 0.123456
        shutil.copytree(runs[key], tmp_path / key)
        (tmp_path / key / "results.json").write_text(json.dumps(results))
        full.append(str(tmp_path / key))
    out = tmp_path / "doc" / "r.md"
    doc = make_doc.main([str(runs[k]) for k in sorted(runs)] + ["--full", *full, "--out", str(out)])
    text = doc.read_text()
    assert "| sklens, budget size | sklens, full size (to the plateau) |" in text
    budget = json.loads((runs["rq1"] / "results.json").read_text())["sparsity"]["top_k_threshold"]
    assert f"| 0.83 | {budget:.3f} | 0.123 | `sparsity.top_k_threshold` |" in text
    assert "Top-10 threshold 0.123 against the paper's 0.83" in text  # the account reads full runs
    assert "CPU time per phase" in text and "--full" in text
    assert (out.parent / "reproduction" / "rq1-full" / "results.json").exists()
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links and all(
        link.startswith("reproduction/rq") and "-full/figures/" in link for link in links
    )
    assert all((doc.parent / link).read_bytes()[:8] == PNG for link in links)  # copied beside it


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "0"], "at least two distinct seeds"),
        (["--permutations", "50"], "at least 200"),
        (["--data", "generated"], "no generated pool"),
    ],
)
def test_bad_arguments_stop_before_any_model_work(tmp_path, extra, message):
    module = _demo("rq1_skillmix")
    with pytest.raises(SystemExit, match=message):
        module.main(module.STUDY, "rq1_skillmix.py", ["--out", str(tmp_path), *extra])


def test_doc_generator_names_missing_runs(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        _demo("make_reproduction_doc").main([str(tmp_path / "nowhere")])


def test_load_bigbench_refuses_a_folder_without_tasks(tmp_path):
    import sklens

    with pytest.raises(ValueError, match="neither a BigBench task.json"):
        sklens.data.load_bigbench(tmp_path)


def test_compare_scans_needs_two_seed_scans():
    from sklens.confirm.stability import compare_scans

    with pytest.raises(ValueError, match="at least two scans named 'seed"):
        compare_scans({})


def test_explain_run_demo_on_a_tiny_hans_run(qwen_dir, tmp_path, capsys):
    """demos/explain_run.py: explain on the run's confirmation split, then HANS twins."""
    from sklens.app.cli import main as sklens_main
    from tests.helpers import study_args

    run = tmp_path / "hans"
    args = study_args(qwen_dir, run, "--metric", "label:heuristic=lexical_overlap")
    args[args.index("--task") + 1] = "hans"
    args[args.index("--n-confirm") + 1] = "36"
    assert sklens_main(args) == 0
    out = tmp_path / "explained"
    argv = [str(run), "--edit", "hans_twin", "--n-random", "3", "--out", str(out), "--quiet"]
    found = _demo("explain_run").main(argv)
    printed = capsys.readouterr().out
    summary = found["explanations"].summary
    assert len(summary) == 3 and all(line in printed for line in summary)
    units = pd.read_csv(out / "counterfactual_units.csv")
    assert (
        len(units) == 3
        and units.n.iloc[0]
        == json.loads((out / "explain_run.json").read_text())["edit"]["used"]
        >= 5
    )
    assert {"loss", "metric"} <= set(pd.read_csv(out / "counterfactual_behaviour.csv").measure)
    # demos/steer_run.py on the same run: loss only, the choices dropped
    curve = _demo("steer_run").main([str(run), "--factors", "0,2", "--n", "6", "--quiet"])
    assert set(curve.factor) == {0.0, 2.0} and set(curve.n) == {6}
    assert curve.d_loss.notna().all() and curve.d_accuracy.isna().all()
