"""Shared fixtures: an isolated cache, seeding, tiny models and generated data."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

# A DeprecationWarning raised from sklens's calls fails the test (pyproject.toml filterwarnings,
# PEFT-style): removals upstream show up in CI before they reach users.


@pytest.fixture(scope="session", autouse=True)
def sklens_home(tmp_path_factory):
    """Every test session builds its tiny checkpoints in a fresh cache, never the user's."""
    home = tmp_path_factory.mktemp("sklens-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("SKLENS_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield home
    mp.undo()


@pytest.fixture(autouse=True)
def seeded():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def qwen_dir(sklens_home):
    from sklens import tiny_checkpoint

    return tiny_checkpoint("qwen2", seed=0)


@pytest.fixture(scope="session")
def llama_dir(sklens_home):
    from sklens import tiny_checkpoint

    return tiny_checkpoint("llama", seed=1)


@pytest.fixture(scope="session")
def _qwen_once(qwen_dir):
    from sklens import load_model

    return load_model(qwen_dir, device="cpu")


@pytest.fixture(scope="session")
def _llama_once(llama_dir):
    from sklens import load_model

    return load_model(llama_dir, device="cpu")


def _private_copy(model, path):
    """A copy no other test shares: deep-copied (as SAELens's tests do), or loaded again where the
    model refuses deepcopy (TransformerLens 4's bridge holds non-leaf tensors)."""
    try:
        return copy.deepcopy(model)
    except RuntimeError:
        from sklens import load_model

        return load_model(path, device="cpu")


@pytest.fixture
def qwen(_qwen_once, qwen_dir):
    """The tiny Qwen2 model, loaded once per session and copied per test, so a test that edits
    or hooks it cannot leak into the next."""
    return _private_copy(_qwen_once, qwen_dir)


@pytest.fixture
def llama(_llama_once, llama_dir):
    return _private_copy(_llama_once, llama_dir)


@pytest.fixture
def examples():
    from tests.helpers import arithmetic_examples

    return arithmetic_examples(48, seed=0)
