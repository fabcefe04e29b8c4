"""Shared fixtures: an isolated cache, seeding, tiny models and generated data."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch


def pytest_configure(config):
    # PEFT-style: an upstream deprecation that reaches our calls fails the test, so removals upstream
    # show up in CI before they reach users.
    warnings.filterwarnings("error", category=DeprecationWarning, module="sklens")


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


@pytest.fixture
def qwen(qwen_dir):
    from sklens import load_model

    return load_model(qwen_dir, device="cpu")


@pytest.fixture
def llama(llama_dir):
    from sklens import load_model

    return load_model(llama_dir, device="cpu")


@pytest.fixture
def examples():
    from tests.helpers import arithmetic_examples

    return arithmetic_examples(48, seed=0)
