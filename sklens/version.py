"""The package version, and the commit of the checkout it runs from, in one place."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def source_commit() -> str | None:
    """The git commit of the checkout sklens runs from, with ``+dirty`` where its tracked files
    differ from it, so a result names the code that made it; None for an installed wheel (no
    checkout) or where git cannot say."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")
