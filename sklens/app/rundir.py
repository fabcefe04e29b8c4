"""Run directories: written as a whole, by one process at a time, and checked before reuse.

A study writes its results into ``--out``. Three things keep that directory honest:

* **A lock.** ``.OUT.sklens-lock`` beside the directory is held with ``flock`` for as long as a
  run (or a report) writes; the kernel releases it when the process dies, so a crash never leaves
  a stale lock. A second run into the same directory fails at once, naming the holder.
* **Staging.** A run writes into ``.OUT.sklens-staging`` beside the directory and replaces
  ``OUT`` with it only when everything is written, so a failed or killed run leaves the previous
  results intact (and its own finished steps in the staging directory for ``--resume``).
* **Fingerprints.** Every stage (training, scan, results) records a hash of the settings that
  determine it, including the fingerprints of its inputs, in ``manifest.json``; the finished
  directory's manifest also holds the sha256 of every file. ``--resume`` reuses a stage's files
  only when its fingerprint matches, and ``sklens report`` refuses a directory whose files are
  not the ones its manifest lists.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sklens import validate
from sklens.app.config import StudyConfig
from sklens.app.cpu_ledger import LEDGER
from sklens.atomic import write_text
from sklens.models.artifacts import sha256_of
from sklens.version import __version__
from sklens.vocabulary import EDIT_NAMES

logger = logging.getLogger("sklens")

MANIFEST = "manifest.json"
# The results stage's finished pieces (``sklens.parts``: each causal set's pass, each seed's
# training checkpoint) while a run is unfinished; a resumed run with the same results settings
# goes on from them. Removed when the run finishes (``finish_parts``).
PARTS = "parts"
# What a study writes (besides the manifest). A directory holding anything else is not replaced:
# it may be the user's own files.
RESULT_NAMES = {
    "prompt",
    "checkpoint",
    "scan.safetensors",
    "neurons.csv",
    "neurons_mi.csv",
    "neurons_absmax.csv",
    "neurons_max.csv",
    "examples.csv",
    "evidence.json",
    "summary.json",
    "causal.csv",
    "steering.csv",
    "dose_response.csv",
    "heldout.csv",
    "attribution.csv",
    "attribution.safetensors",
    "joined.csv",
    "contrast.csv",
    "contrast_untrained.csv",
    "contrast_no_prompt.csv",
    "selection_stability.csv",
    "basis.csv",
    "explanations.csv",
    "behaviour.csv",
    *(f"counterfactual_{edit}.csv" for edit in EDIT_NAMES),
    "measures.csv",
    "stability_jaccard.csv",
    "stability_rank_corr.csv",
    "consensus.csv",
    "report.html",
    PARTS,
    LEDGER,
    MANIFEST,
}


class RunDirError(RuntimeError):
    """A run directory cannot be used: taken, not writable, not sklens's, or inconsistent."""


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of ``settings`` (JSON with sorted keys; inputs' fingerprints go inside)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sibling(out: Path, kind: str) -> Path:
    out = Path(os.path.abspath(out))  # "." and "run/" have a name this way
    return out.with_name(f".{out.name}.sklens-{kind}")


def missing_run(run: Path) -> str:
    """Why ``run`` holds no results, and what to do: a file is not a run directory; a swap that
    a kill interrupted left the results beside it; else nothing was run into it yet."""
    if run.is_file():
        return f"{run} is a file, not a run directory: pass the directory `sklens run --out` wrote"
    old, staging = _sibling(run, "old"), staging_dir(run)
    if not run.exists() and old.is_dir():
        return (
            f"{run} is missing: a run into it was stopped while replacing its results, which "
            f"are in {old} (the previous run) and {staging} (the new one); run `sklens run "
            f"--out {run} --resume` with the new run's settings to finish it"
        )
    return f"{run} has no summary.json: run `sklens run --out {run}` first"


def read_summary(run: Path) -> tuple[dict[str, Any], StudyConfig]:
    """``RUN/summary.json`` and its study settings; a damaged or foreign file names itself and
    the fix."""
    path = run / "summary.json"
    if not path.exists():
        raise FileNotFoundError(missing_run(run))
    rerun = f"run `sklens run --out {run}` again with the run's settings to rewrite it"
    summary = validate.json_file(path, rerun)
    saved = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} has no 'config' object: not a sklens summary; {rerun}")
    if any("neuron" in row for row in summary.get("top_neurons") or []):
        raise ValueError(
            f"{path} comes from a sklens whose tables name the unit column 'neuron' (now "
            f"'unit'), and so do the run's CSVs; {rerun}"
        )
    try:
        config = StudyConfig.from_dict(saved)
    except KeyError as err:
        version = (summary.get("versions") or {}).get("sklens", "another version")
        raise ValueError(
            f"{path} has settings this sklens ({__version__}) does not know: {err.args[0]}. "
            f"It was written by sklens {version}; report it with that version, or {rerun}"
        ) from None
    return summary, config


def staging_dir(out: Path) -> Path:
    """Where a run into ``out`` writes until it is complete."""
    return _sibling(out, "staging")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a directory holding files sklens did not write."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; pass a directory (new or from an earlier run)")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise RunDirError(
                f"--out {out} holds files that sklens did not write ({shown}); a run replaces "
                "the whole directory, so pass a new or empty --out (or move those files)"
            )


def _ours(name: str) -> bool:
    return name in RESULT_NAMES or (name.startswith(".") and name.endswith(".tmp"))


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError):
        return "holder unknown"


@contextmanager
def locked(out: Path, command: str) -> Iterator[None]:
    """Hold the lock of run directory ``out`` for the block; fail at once if another holds it."""
    path = _sibling(out, "lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunDirError(
            f"cannot write beside {out} ({err.strerror}); {command} needs a writable directory"
        ) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"{out} is being written by another sklens process ({_holder(fd)}); wait for it "
                "to finish, or pass another --out"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as err:  # a full disk: say where, and what to do
            path.unlink(missing_ok=True)
            raise RunDirError(
                f"cannot write the lock file {path} ({err.strerror}); free space on that disk "
                "or pass an --out on another one"
            ) from err
        yield
    finally:
        os.close(fd)  # releases the lock


def _recover(out: Path) -> None:
    """Finish or undo a swap that a kill interrupted (see ``staged``)."""
    old = _sibling(out, "old")
    if old.exists():
        if out.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, out)


@contextmanager
def staged(out: Path, *, resume: bool) -> Iterator[Path]:
    """Lock ``out`` and yield the staging directory; replace ``out`` with it if the block succeeds.

    Without ``resume`` the staging directory starts empty; with it, what a failed or killed run
    left there is kept (each stage checks its fingerprint before reusing anything).
    """
    check_out(out)
    staging = staging_dir(out)
    with locked(out, "sklens run"):
        _recover(out)
        if not resume:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True, exist_ok=True)
            yield staging
            _swap(staging, out)
        except BaseException as err:
            if out.exists():
                logger.warning("the previous results in %s are unchanged", out)
            if _disk_error(err, staging):
                raise RunDirError(
                    f"could not write the results ({err.strerror}: {err.filename or staging}); "
                    f"the previous results in {out} are unchanged. Free space or pass a writable "
                    "--out, then run again with --resume to keep the finished steps"
                ) from err
            raise


def _swap(staging: Path, out: Path) -> None:
    """Put the finished run in place of ``out``: two renames of whole directories, or, when
    ``out`` is the working directory (``--out .``), of its entries, so the directory (and the
    shell that ran sklens in it) stays the same one."""
    old = _sibling(out, "old")
    if out.is_dir() and Path.cwd().resolve() == out.resolve():
        old.mkdir()
        for entry in out.iterdir():
            os.replace(entry, old / entry.name)
        for entry in staging.iterdir():
            os.replace(entry, out / entry.name)
        staging.rmdir()
    else:
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _disk_error(err: BaseException, staging: Path) -> bool:
    """Whether ``err`` is a full or unwritable disk under ``staging`` (not, say, a model file)."""
    if not isinstance(err, OSError):
        return False
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    inside = err.filename is not None and str(err.filename).startswith(str(staging))
    return err.errno in (errno.EACCES, errno.EPERM) and inside


def file_hashes(directory: Path, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of every file under ``directory`` (or under the given entries), by relative path."""
    roots = [directory / n for n in names] if names is not None else [directory]
    files = [p for r in roots for p in ([r] if r.is_file() else sorted(r.rglob("*")))]
    return {
        p.relative_to(directory).as_posix(): sha256_of(p)
        for p in files
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
    }


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of ``directory``; empty when there is none (or it is unreadable)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


def mismatched_files(directory: Path) -> list[str]:
    """Files of a finished run directory that its manifest does not vouch for (empty: consistent).

    A listed file that is missing or has another sha256, and a result file the manifest does not
    list, are both reported: either one means the directory mixes runs.
    """
    listed = read_manifest(directory).get("files")
    if not isinstance(listed, dict):
        return [MANIFEST]
    present = file_hashes(
        directory, [n for n in RESULT_NAMES - {"report.html"} if (directory / n).exists()]
    )
    return sorted(
        name for name in listed.keys() | present.keys() if listed.get(name) != present.get(name)
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Put ``source`` (a file or a directory tree) at ``target``, by hard links where possible.

    Safe because sklens never writes a file in place: every write renames a new file over it.
    """
    _remove(target)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link)
    else:
        link(str(source), str(target))


def describe(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The settings that differ, as the user names them: ``--flag`` for a setting key, the key
    itself for an input (keys with spaces, such as ``"train data"``)."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(k if " " in k else "--" + k.replace("_", "-") for k in keys)


def prepare(
    staging: Path,
    out: Path,
    stage: str,
    settings: dict[str, Any],
    paths: list[str],
    *,
    resume: bool,
) -> bool:
    """Make ``paths`` in ``staging`` hold ``stage``'s earlier work for ``settings``, or nothing.

    With ``resume``, earlier work is kept from ``staging`` (left by a failed or killed run) or
    linked in from the finished run in ``out``, only when its fingerprint matches and, for
    ``out``, its files are the ones the manifest lists. Otherwise the stale files are removed and
    the new fingerprint recorded before the stage runs, so whatever ``staging`` holds always
    belongs to the fingerprint recorded beside it. Returns whether earlier work was kept (the
    caller still checks which files exist: a killed stage may have written none).
    """
    fp = fingerprint(settings)
    manifest = read_manifest(staging)
    stages = manifest.setdefault("stages", {})
    mine = stages.get(stage, {})
    if resume and mine.get("fingerprint") == fp:
        return True
    done = read_manifest(out) if resume else {}
    theirs = done.get("stages", {}).get(stage, {})
    if resume and theirs.get("fingerprint") == fp:
        present = [name for name in paths if (out / name).exists()]
        listed = done.get("files", {})
        hashes = file_hashes(out, present)
        damaged = sorted(k for k, v in hashes.items() if listed.get(k) != v)
        if not damaged:
            for name in present:
                link_or_copy(out / name, staging / name)
            stages[stage] = theirs
            write_manifest(staging, manifest)
            return True
        logger.warning(
            "%s: %s in %s changed since that run (damaged or edited); recomputing this stage",
            stage,
            ", ".join(damaged),
            out,
        )
    elif resume and (mine or theirs):
        changed = describe((mine or theirs).get("settings", {}), settings)
        logger.info("%s: recomputing, because %s changed since the previous run", stage, changed)
    for name in paths:
        _remove(staging / name)
    stages[stage] = {"fingerprint": fp, "settings": settings}
    write_manifest(staging, manifest)
    return False


def finish_parts(staging: Path) -> None:
    """Drop the results stage's pieces and their manifest entry: the finished run holds its
    tables, and a later ``--resume`` of a finished run recomputes its results anyway."""
    _remove(staging / PARTS)
    manifest = read_manifest(staging)
    manifest.get("stages", {}).pop(PARTS, None)
    write_manifest(staging, manifest)


def check_consistent(run: Path) -> None:
    """Refuse a run directory whose files are not the ones its manifest lists."""
    mismatched = mismatched_files(run)
    if mismatched == [MANIFEST]:
        raise RunDirError(
            f"{run} has no valid {MANIFEST}, so nothing shows that its files come from one "
            f"run; run `sklens run --out {run}` again"
        )
    if mismatched:
        raise RunDirError(
            f"{run} mixes files from different runs: {', '.join(mismatched)} "
            f"{'is' if len(mismatched) == 1 else 'are'} not what its {MANIFEST} lists "
            f"(written by another run, or changed since); run `sklens run --out {run}` again"
        )
