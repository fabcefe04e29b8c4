"""Atomic file writes: a result is either absent or complete, never half written."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FULL_BELOW = 1 << 20  # bytes free under which a failed write is put down to a full disk


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place in one rename.

    On an exception the temporary file is removed and ``path`` keeps its previous content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
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
        if os.path.exists(tmp):
            os.remove(tmp)


def _nearly_full(directory: Path) -> bool:
    """Whether the disk holding ``directory`` is (nearly) full: writers such as ``torch.save``
    (``basic_ios::clear: iostream error``) and safetensors report a full disk without ENOSPC."""
    try:
        return shutil.disk_usage(directory).free < FULL_BELOW
    except OSError:
        return False


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
