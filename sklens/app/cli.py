"""The ``sklens`` command: ``sklens run`` (a study end to end), ``report`` and ``explain`` (read a
run back) and ``fetch`` (prefetch)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from sklens import validate
from sklens.allocator import hold_freed_memory
from sklens.config import StudyConfig

PACKAGE = Path(__file__).resolve().parent.parent  # sklens/, where every check of ours lives

EPILOG = """examples:
  sklens run                                   # arithmetic on the embedded SmolLM2-135M, CPU
  sklens run --task hans --metric label:heuristic=lexical_overlap --out hans-run
  sklens run --task my_task.jsonl --metric label:skill=spatial --model path/to/checkpoint
  sklens run --model Qwen/Qwen1.5-1.8B-Chat --device cuda --steps 300 --n-train 2000 --n-val 1000
  sklens explain sklens-out                    # the top neurons' explanations, held out
  sklens fetch                                 # prefetch the embedded model and BigBench data
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sklens",
        description="Find skill neurons.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a soft prompt, scan neurons, write results")
    defaults = StudyConfig()
    helps = {
        "task": "arithmetic | hans | skillmix | FILE.jsonl",
        "model": "embedded default, official TransformerLens name, HF directory or .gguf",
        "metric": "loss | confidence | choice_confidence | label:KEY | label:KEY=VALUE (default: the task's)",
        "data": "a HANS .txt or Skill-Mix .jsonl file instead of the generator, or for arithmetic "
        "a BigBench task.json or a folder of */task.json",
        "n_tokens": "soft-prompt length",
        "n_extremal": "most/least activating examples per neuron",
        "reduce": "max (the paper's rule) or absmax (symmetric)",
        "backend": "auto (HookedTransformer where it loads the model, else TransformerBridge), "
        "hooked or bridge",
        "ablate": "also run the causal check of the top-K neurons against random controls",
        "ablate_modes": "comma-separated: zero, mean, resample, noise",
        "n_causal": "examples of a third split for the causal check",
        "match_scale": "random control neurons matched in mean |activation| (--no-match-scale: off)",
        "steering": "comma-separated factors: a steering curve of the top-K on the causal split, "
        "against random sets (e.g. 0,0.5,2,4)",
        "permutations": "B > 0 adds a max-statistic permutation null (FWER, FDR)",
        "permutation_groups": "meta field: scan the within-group r, permute within its groups",
        "mi_bins": "A > 0 also ranks neurons by binned mutual information with the metric, A "
        "equal-frequency bins per neuron (neurons_mi.csv; 4 is a good choice)",
        "site": "what a unit is: mlp (the paper's neurons), heads, head_dims, resid, a hook "
        "template such as 'blocks.{layer}.hook_resid_mid', or sae:DIR[,DIR] (SAELens SAEs saved "
        "with save_model)",
        "steps": "maximum training steps (training stops earlier on a plateau)",
        "patience": "stop after this many evaluations without a lower plateau-slice loss; "
        "0 trains all --steps",
        "eval_every": "training steps between evaluations of the plateau slice",
        "n_train": "training examples, the plateau slice included",
        "n_plateau": "training examples held out to detect the plateau",
        "n_val": "the selection set: the scan that picks the top-K",
        "n_confirm": "a disjoint split on which the top-K are re-measured (0: skip)",
        "seeds": "comma-separated seeds for a seed-stability study, e.g. 0,1,2",
        "measures": "comma-separated, on the confirm split: spearman, auroc, cohens_d, "
        "eta_squared, kruskal_wallis, partial_pearson",
        "covariates": "comma-separated numeric meta fields for partial_pearson",
    }
    for f in fields(StudyConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = helps.get(f.name, f.name.replace("_", " "))
        if isinstance(default, bool):
            run.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        kind = type(default) if default is not None else str
        run.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")
    run.add_argument("--out", default="sklens-out", help="output directory (default: sklens-out)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="reuse the training and scan of an earlier run into --out (finished, failed or "
        "killed) where the settings that determine them are the same",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--report", action="store_true", help="also write report.html")
    report = sub.add_parser("report", help="write a self-contained report.html for a run directory")
    report.add_argument("run_dir", type=Path)
    explain = sub.add_parser(
        "explain", help="print a run's ranked explanations of its top neurons (held out)"
    )
    explain.add_argument("run_dir", type=Path)
    explain.add_argument(
        "--top", type=int, default=3, help="hypotheses shown per neuron (default: 3)"
    )
    fetch = sub.add_parser("fetch", help="fetch and convert the embedded model and data once")
    fetch.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="a directory that already holds the downloaded archives",
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
    hold_freed_memory()  # a pass re-faults every freed activation otherwise (sklens/allocator.py)
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
    config = StudyConfig(**{f.name: getattr(args, f.name) for f in fields(StudyConfig)})
    validate.study(config)  # before importing torch: a bad flag fails in a fraction of a second
    validate.output_dir(args.out, create=False)  # a finished run creates it
    from sklens.app.printed import format_table
    from sklens.app.study import run_study

    summary = run_study(config, args.out, resume=args.resume, progress=not args.quiet)
    print(format_table(args.out))
    if args.report:
        _report(Path(args.out))
    t = summary["timings_s"]
    print(
        f"\nmetric {summary['metric']} over {summary['data']['n_val']} validation examples; "
        f"results in {args.out}/ (timings: {', '.join(f'{k} {v:.0f}s' for k, v in t.items())})"
    )
    return 0


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
