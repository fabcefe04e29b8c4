"""Atomic file writes: a result is either absent or complete, never half written.

A write goes to a hidden temporary file (or directory) beside its target and is renamed into place
when complete. While it is being written, the writing process holds an ``flock`` on it; the lock
dies with the process, so a temporary left by a killed process is recognisably stale (nobody
holds its lock) and the next write beside it removes it. Nothing is left behind for good.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FULL_BELOW = 1 << 20  # bytes free under which a failed write is put down to a full disk


def _in_use(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (a temporary being written)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # gone already, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock taken just now
    return False


def remove_stale(directory: Path, prefix: str, suffix: str = "") -> None:
    """Remove the temporaries ``prefix*suffix`` in ``directory`` that no live process writes."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        path = Path(entry.path)
        if _in_use(path):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    On an exception the temporary file is removed and ``path`` keeps its previous content. The
    data is flushed to disk before the rename, so even a power cut leaves the old or the new file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    remove_stale(target.parent, prefix, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # in use until closed: see the module doc
        yield Path(tmp)
        os.fsync(fd)  # the writer wrote through its own descriptor; this flushes the same file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are ordinary files
        os.replace(tmp, target)
    except Exception as err:
        if getattr(err, "errno", None) == errno.ENOSPC or _nearly_full(target.parent):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing {target} ({type(err).__name__}: "
                f"{err}); {target.name} was not changed: free some space or write elsewhere",
            ) from err
        raise
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)


def _nearly_full(directory: Path) -> bool:
    """Whether the disk holding ``directory`` is (nearly) full: writers such as ``torch.save``
    (``basic_ios::clear: iostream error``) and safetensors report a full disk without ENOSPC."""
    try:
        return shutil.disk_usage(directory).free < FULL_BELOW
    except OSError:
        return False


@contextmanager
def partial_dir(root: str | os.PathLike, prefix: str = ".partial-") -> Iterator[Path]:
    """A temporary directory in ``root`` for building something that is renamed into place.

    Stale ones left by killed processes are removed first. If the block does not move the
    directory away, it is removed on exit. Creating and cleaning happen under a lock on
    ``root/.lock``, so a cleaner never sees a new directory before its creator has locked it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    guard = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(guard, fcntl.LOCK_EX)
        remove_stale(root, prefix)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        fd = os.open(tmp, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(guard)
    try:
        yield tmp
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a full disk raises OSError ENOSPC here)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table without its index, atomically (a reader never sees half a file).

    Every text field is quoted, so any text round-trips (a bare carriage return in an unquoted
    field reads back as a row break); float32 columns are written at the precision they have
    (0.05, not 0.05000000074505806).
    """
    import csv

    import numpy as np

    frame = frame.copy()
    for column in frame.columns[frame.dtypes == np.float32]:
        frame[column] = frame[column].astype(str).astype(np.float64)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
